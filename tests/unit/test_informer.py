"""booking_client.Informer on its own, with list and watch callables standing in for a server: the first list,
events after it, a re-list after the stream is lost, and the errors that end it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from booking_api.booking.v1 import booking_pb2, events_pb2
from booking_client import Change, CursorExpired, Informer, PermissionDenied
from booking_client._options import Backoff

UPDATED = events_pb2.BOOKING_EVENT_TYPE_UPDATED
HARD_DELETED = events_pb2.BOOKING_EVENT_TYPE_HARD_DELETED


def booking(booking_id: str, version: int, *, deleted: bool = False) -> booking_pb2.Booking:
    made = booking_pb2.Booking(id=booking_id, etag=f'"{version}"', notes=f"v{version}")
    if deleted:
        made.delete_time.GetCurrentTime()
    return made


class FakeWatch:
    """One subscription: started at once; yields what the test puts, raises an exception put."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.items: asyncio.Queue[events_pb2.BookingEvent | Exception] = asyncio.Queue()

    async def events(self) -> AsyncIterator[events_pb2.BookingEvent]:
        self.started.set()
        while True:
            item = await self.items.get()
            if isinstance(item, Exception):
                raise item
            yield item


class FakeServer:
    """The state a list returns, and the watches the informer opened (the newest last)."""

    def __init__(self, *bookings: booking_pb2.Booking) -> None:
        self.state = {b.id: b for b in bookings}
        self.watches: list[FakeWatch] = []

    async def list_bookings(self) -> AsyncIterator[booking_pb2.Booking]:
        for listed in list(self.state.values()):
            yield listed

    def watch(self) -> FakeWatch:
        self.watches.append(FakeWatch())
        return self.watches[-1]

    def change(self, changed: booking_pb2.Booking, kind: events_pb2.BookingEventType.ValueType = UPDATED) -> None:
        """Commit a change: the state lists show it and the newest watch sees it."""
        if kind == HARD_DELETED:
            self.state.pop(changed.id)
        else:
            self.state[changed.id] = changed
        self.watches[-1].items.put_nowait(events_pb2.BookingEvent(type=kind, booking=changed))

    def informer(self, *, show_deleted: bool = False) -> Informer:
        return Informer(self.list_bookings, self.watch, backoff=Backoff(0.001, 0.01), show_deleted=show_deleted)


async def next_change(changes: AsyncIterator[Change]) -> tuple[str, str, str | None]:
    change = await asyncio.wait_for(anext(changes), 5)
    return change.kind, change.booking.notes, change.previous.notes if change.previous else None


async def test_the_first_list_fills_the_cache_and_later_events_change_it() -> None:
    server = FakeServer(booking("b1", 1), booking("b2", 1))
    async with server.informer() as informer:
        changes = informer.changes()
        await informer.wait_synced(5)
        assert {b.id for b in informer.items()} == {"b1", "b2"}
        server.change(booking("b1", 2))
        assert await next_change(changes) == ("added", "v1", None)  # the list, as the reader first sees it
        assert await next_change(changes) == ("added", "v1", None)
        assert await next_change(changes) == ("updated", "v2", "v1")
        server.change(booking("b2", 1), HARD_DELETED)
        assert await next_change(changes) == ("removed", "v1", None)
        assert informer.get("b2") is None and informer.get("b1") == booking("b1", 2)


async def test_an_event_no_newer_than_what_the_list_showed_is_skipped() -> None:
    server = FakeServer(booking("b1", 3))
    async with server.informer() as informer:
        changes = informer.changes()
        await informer.wait_synced(5)
        await next_change(changes)
        server.watches[-1].items.put_nowait(events_pb2.BookingEvent(type=UPDATED, booking=booking("b1", 2)))
        server.change(booking("b1", 4))
        assert await next_change(changes) == ("updated", "v4", "v3")  # never back to v2 on the way
        assert informer.get("b1") == booking("b1", 4)


async def test_a_soft_delete_removes_the_booking_unless_deleted_ones_are_shown() -> None:
    for show_deleted, expected in ((False, ("removed", "v1", None)), (True, ("updated", "v2", "v1"))):
        server = FakeServer(booking("b1", 1))
        async with server.informer(show_deleted=show_deleted) as informer:
            changes = informer.changes()
            await informer.wait_synced(5)
            await next_change(changes)
            server.change(booking("b1", 2, deleted=True))
            assert await next_change(changes) == expected


async def test_a_relist_after_the_stream_is_lost_reports_what_changed_meanwhile_from_the_state_it_held() -> None:
    server = FakeServer(booking("b1", 1), booking("b2", 1))
    async with server.informer() as informer:
        changes = informer.changes()
        await informer.wait_synced(5)
        await next_change(changes), await next_change(changes)
        # Missed by the lost stream: b1 changed, b2 went, b3 came.
        server.state["b1"] = booking("b1", 2)
        del server.state["b2"]
        server.state["b3"] = booking("b3", 1)
        server.watches[-1].items.put_nowait(CursorExpired("trimmed"))
        seen = {await next_change(changes) for _ in range(3)}
        assert seen == {("updated", "v2", "v1"), ("removed", "v1", None), ("added", "v1", None)}
        assert informer.lists == 2 and len(server.watches) == 2
        assert {b.id: b.notes for b in informer.items()} == {"b1": "v2", "b3": "v1"}


async def test_an_error_a_retry_cannot_mend_ends_the_informer_and_its_readers() -> None:
    server = FakeServer(booking("b1", 1))
    async with server.informer() as informer:
        changes = informer.changes()
        await informer.wait_synced(5)
        await next_change(changes)
        server.watches[-1].items.put_nowait(PermissionDenied("revoked"))
        with pytest.raises(PermissionDenied):
            await asyncio.wait_for(anext(changes), 5)
        assert isinstance(informer.error, PermissionDenied) and len(server.watches) == 1


async def test_a_hold_is_added_confirmed_as_an_update_and_removed_when_it_expires() -> None:
    server = FakeServer()
    async with server.informer() as informer:
        changes = informer.changes()
        await informer.wait_synced(5)
        held = booking("h1", 1)
        held.state = booking_pb2.BOOKING_STATE_HELD
        server.change(held, events_pb2.BOOKING_EVENT_TYPE_HELD)
        assert await next_change(changes) == ("added", "v1", None)
        confirmed = booking("h1", 2)
        confirmed.state = booking_pb2.BOOKING_STATE_CONFIRMED
        server.change(confirmed, events_pb2.BOOKING_EVENT_TYPE_CONFIRMED)
        assert await next_change(changes) == ("updated", "v2", "v1")
        lapsed = booking("h2", 1)
        lapsed.state = booking_pb2.BOOKING_STATE_HELD
        server.change(lapsed, events_pb2.BOOKING_EVENT_TYPE_HELD)
        await next_change(changes)
        server.change(booking("h2", 2, deleted=True), events_pb2.BOOKING_EVENT_TYPE_EXPIRED)  # retired: deleted
        assert await next_change(changes) == ("removed", "v1", None)
        assert [b.id for b in informer.items()] == ["h1"] and informer.get("h1") == confirmed
