"""`BookingClient.informer()`: a local cache of the bookings a caller may see, kept equal to the server's state,
as Kubernetes' informers do for its objects (list, then watch; list again when the watch cannot go on).

    async with client.informer(provider_id="p1") as informer:
        await informer.wait_synced()
        informer.get(booking_id); informer.items()
        async for change in informer.changes(): ...  # each booking's latest change, once per read

How it stays exact: it subscribes first (the server says from which position), then lists, then applies the
events that arrived meanwhile and every later one, in stream order. A booking's last event is always its
latest state, so the cache ends where the server is; an event older than what the list showed (by the
booking's version, its etag) is skipped, so the cache never steps back. Soft-deleted bookings leave the cache
unless `show_deleted`; hard-deleted ones always do. When the watch raises CursorExpired (the stream no longer
holds what follows: trimmed, or Redis lost its data), it subscribes and lists again, and reports the
difference as changes. Other failures are retried with backoff, except those a retry cannot mend
(UNAUTHENTICATED, PERMISSION_DENIED, INVALID_ARGUMENT), which end it: `wait_synced()` and `changes()` raise them.

A reader of `changes()` that falls behind holds at most one change per booking, as Kubernetes' work queues
hold keys: a booking that changes again before it is read is merged into its waiting change (its latest state,
and the kind that leads from what the reader last saw to it), so memory is bounded by the bookings, not by
the rate of events.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from booking_api.booking.v1 import booking_pb2, events_pb2
from booking_client._errors import (
    BookingError,
    CursorExpired,
    InvalidArgument,
    PermissionDenied,
    Unauthenticated,
)

if TYPE_CHECKING:
    from booking_client._options import Backoff

FATAL = (Unauthenticated, PermissionDenied, InvalidArgument)
# Events held while the informer lists: beyond that the watch stops reading, the server ends it as a slow
# consumer in time, and it resumes from its cursor, so the bound costs a resume, never an event.
PENDING_EVENTS = 1000


@dataclass(frozen=True)
class Change:
    """A booking added to, changed in, or removed from the cache. An "updated" change carries the state the
    reader saw before (`previous`) and the new one (`booking`), as client-go's OnUpdate(old, new) does; a
    "removed" one the last state the cache held."""

    kind: Literal["added", "updated", "removed"]
    booking: booking_pb2.Booking
    previous: booking_pb2.Booking | None = None  # "updated": the state before


def version(booking: booking_pb2.Booking) -> int:
    """The booking's version, from its etag (`"N"`); -1 if the etag is not one."""
    digits = booking.etag.strip('"')
    return int(digits) if digits.isdigit() else -1


class Changes:
    """One reader's changes not yet read, oldest booking first, at most one per booking (merged: see the module).
    `len()` is how many wait. Raises what ended the informer once the changes before it have been read."""

    def __init__(self) -> None:
        self._waiting: dict[str, Change] = {}  # by booking id, in the order each booking first waited
        self._error: BaseException | None = None
        self._ready = asyncio.Event()

    def __len__(self) -> int:
        return len(self._waiting)

    def __aiter__(self) -> Changes:
        return self

    async def __anext__(self) -> Change:
        while not self._waiting:
            if self._error is not None:
                raise self._error
            self._ready.clear()
            await self._ready.wait()
        return self._waiting.pop(next(iter(self._waiting)))

    def put(self, change: Change) -> None:
        booking_id = change.booking.id
        earlier = self._waiting.get(booking_id)
        if earlier is not None and earlier.kind == "added" and change.kind == "removed":
            del self._waiting[booking_id]  # came and went unseen
            return
        if earlier is not None and earlier.kind == "added":
            change = Change("added", change.booking)  # updated, but still new to the reader
        elif earlier is not None and earlier.kind == "removed":
            change = Change("updated", change.booking, earlier.booking)  # back: the reader knew it before it left
        elif earlier is not None and earlier.kind == "updated" and change.kind == "updated":
            change = Change("updated", change.booking, earlier.previous)  # from what the reader last saw
        self._waiting[booking_id] = change  # a booking already waiting keeps its place
        self._ready.set()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._ready.set()


class EventStream(Protocol):
    """What the informer reads changes from (a Watch is one): its events, and `started`, set once the server has
    accepted the subscription (from then on nothing committed is missed)."""

    started: asyncio.Event

    def events(self) -> AsyncIterator[events_pb2.BookingEvent]: ...


class Informer:
    """Given how to list what it caches (`list_bookings`) and how to watch it (`watch`: a new stream from now
    each time it is called); BookingClient.informer() wires both to the same filters."""

    def __init__(
        self,
        list_bookings: Callable[[], AsyncIterator[booking_pb2.Booking]],
        watch: Callable[[], EventStream],
        *,
        backoff: Backoff,
        show_deleted: bool,
    ) -> None:
        self._list_bookings = list_bookings
        self._watch = watch
        self._backoff = backoff
        self._show_deleted = show_deleted
        self._cache: dict[str, booking_pb2.Booking] = {}
        self._synced = asyncio.Event()
        self._listeners: weakref.WeakSet[Changes] = weakref.WeakSet()  # a reader that is dropped is forgotten
        self._task: asyncio.Task[None] | None = None
        self.error: BaseException | None = None
        self.lists = 0  # how many times it has listed (1 + re-lists after CursorExpired or failures)

    async def __aenter__(self) -> Informer:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def wait_synced(self, timeout: float | None = None) -> None:
        """Wait until the first list has been merged (raises what ended the informer, if anything did)."""
        await asyncio.wait_for(self._synced.wait(), timeout)
        if self.error is not None:
            raise self.error

    def get(self, booking_id: str) -> booking_pb2.Booking | None:
        return self._cache.get(booking_id)

    def items(self) -> list[booking_pb2.Booking]:
        return list(self._cache.values())

    def changes(self) -> Changes:
        """What changes in the cache from this call on (an async iterator; see Changes)."""
        reader = Changes()
        self._listeners.add(reader)
        return reader

    # --- the loop -------------------------------------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                await self._list_and_watch()
            except CursorExpired:
                failures = 0  # expected: the stream moved on; list again at once
            except FATAL as error:
                self._fail(error)
                return
            except BookingError:
                await asyncio.sleep(self._backoff.delay(failures))
                failures = min(failures + 1, 10)

    def _fail(self, error: BaseException) -> None:
        self.error = error
        self._synced.set()
        for reader in self._listeners:
            reader.fail(error)

    async def _list_and_watch(self) -> None:
        watch = self._watch()
        pending: asyncio.Queue[events_pb2.BookingEvent | BaseException] = asyncio.Queue(PENDING_EVENTS)

        async def follow() -> None:
            try:
                async for event in watch.events():
                    await pending.put(event)
            except BookingError as error:
                await pending.put(error)

        following = asyncio.create_task(follow())
        try:
            started = asyncio.ensure_future(watch.started.wait())
            await asyncio.wait([started, following], return_when=asyncio.FIRST_COMPLETED)
            if not watch.started.is_set():
                started.cancel()
                item = await pending.get()
                raise item if isinstance(item, BaseException) else AssertionError("an event before the start")
            listed = {booking.id: booking async for booking in self._list_bookings()}
            self.lists += 1
            self._replace(listed)
            self._synced.set()
            while True:
                item = await pending.get()
                if isinstance(item, BaseException):
                    raise item
                self._apply(item)
        finally:
            following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await following

    def _replace(self, listed: dict[str, booking_pb2.Booking]) -> None:
        for booking_id in [i for i in self._cache if i not in listed]:
            self._emit(Change("removed", self._cache.pop(booking_id)))
        for booking_id, booking in listed.items():
            known = self._cache.get(booking_id)
            if known is None or known.etag != booking.etag or known != booking:
                self._cache[booking_id] = booking
                self._emit(Change("added", booking) if known is None else Change("updated", booking, known))

    def _apply(self, event: events_pb2.BookingEvent) -> None:
        booking = event.booking
        known = self._cache.get(booking.id)
        if event.type == events_pb2.BOOKING_EVENT_TYPE_HARD_DELETED or (
            booking.HasField("delete_time") and not self._show_deleted
        ):
            if known is not None and (
                event.type == events_pb2.BOOKING_EVENT_TYPE_HARD_DELETED or version(known) <= version(booking)
            ):
                self._emit(Change("removed", self._cache.pop(booking.id)))
            return
        if known is not None and version(known) >= version(booking):
            return  # the list already showed this state or a later one
        self._cache[booking.id] = booking
        self._emit(Change("added", booking) if known is None else Change("updated", booking, known))

    def _emit(self, change: Change) -> None:
        for reader in self._listeners:
            reader.put(change)
