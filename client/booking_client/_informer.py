"""`BookingClient.informer()`: a local cache of the bookings a caller may see, kept equal to the server's state,
as Kubernetes' informers do for its objects (list, then watch; list again when the watch cannot go on).

    async with client.informer(provider_id="p1") as informer:
        await informer.wait_synced()
        informer.get(booking_id); informer.items()
        async for change in informer.changes(): ...

How it stays exact: it subscribes first (the server says from which position), then lists, then applies the
events that arrived meanwhile and every later one, in stream order. A booking's last event is always its
latest state, so the cache ends where the server is; an event older than what the list showed (by the
booking's version, its etag) is skipped, so the cache never steps back. Soft-deleted bookings leave the cache
unless `show_deleted`; hard-deleted ones always do. When the watch raises CursorExpired (the stream no longer
holds what follows: trimmed, or Redis lost its data), it subscribes and lists again, and reports the
difference as changes. Other failures are retried with backoff, except those a retry cannot mend
(UNAUTHENTICATED, PERMISSION_DENIED, INVALID_ARGUMENT), which end it: `wait_synced()` and `changes()` raise them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from booking_api.booking.v1 import booking_pb2, events_pb2
from booking_client._errors import (
    BookingError,
    CursorExpired,
    InvalidArgument,
    PermissionDenied,
    Unauthenticated,
)
from booking_client._watch import Watch

if TYPE_CHECKING:
    from booking_client._client import BookingClient

FATAL = (Unauthenticated, PermissionDenied, InvalidArgument)


@dataclass(frozen=True)
class Change:
    kind: Literal["added", "updated", "removed"]
    booking: booking_pb2.Booking


def version(booking: booking_pb2.Booking) -> int:
    """The booking's version, from its etag (`"N"`); -1 if the etag is not one."""
    digits = booking.etag.strip('"')
    return int(digits) if digits.isdigit() else -1


class Informer:
    def __init__(self, client: BookingClient, *, customer_id: str, provider_id: str, show_deleted: bool) -> None:
        self._client = client
        self._filters = {"customer_id": customer_id, "provider_id": provider_id}
        self._show_deleted = show_deleted
        self._cache: dict[str, booking_pb2.Booking] = {}
        self._synced = asyncio.Event()
        self._listeners: list[asyncio.Queue[Change | BaseException]] = []
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

    async def changes(self) -> AsyncIterator[Change]:
        """What changes in the cache from now on, in order."""
        queue: asyncio.Queue[Change | BaseException] = asyncio.Queue()
        self._listeners.append(queue)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self._listeners.remove(queue)

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
                await asyncio.sleep(self._client.backoff.delay(failures))
                failures = min(failures + 1, 10)

    def _fail(self, error: BaseException) -> None:
        self.error = error
        self._synced.set()
        for queue in self._listeners:
            queue.put_nowait(error)

    async def _list_and_watch(self) -> None:
        watch = Watch(self._client, "", self._filters["customer_id"], self._filters["provider_id"], "")
        pending: asyncio.Queue[events_pb2.BookingEvent | BaseException] = asyncio.Queue()

        async def follow() -> None:
            try:
                async for event in watch.events():
                    pending.put_nowait(event)
            except BookingError as error:
                pending.put_nowait(error)

        following = asyncio.create_task(follow())
        try:
            started = asyncio.ensure_future(watch.started.wait())
            await asyncio.wait([started, following], return_when=asyncio.FIRST_COMPLETED)
            if not watch.started.is_set():
                started.cancel()
                item = await pending.get()
                raise item if isinstance(item, BaseException) else AssertionError("an event before the start")
            listed = {
                booking.id: booking
                async for booking in self._client.list_bookings(
                    customer_id=self._filters["customer_id"],
                    provider_id=self._filters["provider_id"],
                    show_deleted=self._show_deleted,
                )
            }
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
                self._emit(Change("added" if known is None else "updated", booking))

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
        self._emit(Change("added" if known is None else "updated", booking))

    def _emit(self, change: Change) -> None:
        for queue in self._listeners:
            queue.put_nowait(change)
