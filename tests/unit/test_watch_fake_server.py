"""watch() and informer() against a fake server that plays the moments real servers make rare on purpose: an event
the list already showed arriving late, a booking gone between a lost stream and the re-list, a resumed stream
that repeats the cursor's event. In-process gRPC on a real port; no database, no Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest

from booking_api.booking.v1 import booking_pb2, booking_pb2_grpc, events_pb2
from booking_api.notify.v1 import notify_pb2, notify_pb2_grpc
from booking_client import BookingClient, Change

pytestmark = pytest.mark.timeout(30)

Script = Callable[[notify_pb2.SubscribeRequest, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Any]]


def booking(booking_id: str, version: int) -> booking_pb2.Booking:
    return booking_pb2.Booking(id=booking_id, provider_id="p", customer_id="c", etag=f'"{version}"')


def response(
    event_id: str, kind: events_pb2.BookingEventType.ValueType, state: booking_pb2.Booking
) -> notify_pb2.SubscribeResponse:
    return notify_pb2.SubscribeResponse(events=[events_pb2.BookingEvent(event_id=event_id, type=kind, booking=state)])


class Fake:
    """ListBookings answers the next of `lists`; each Subscribe plays the next of `streams` (served as both
    services; the client calls nothing else)."""

    def __init__(self, lists: list[list[booking_pb2.Booking]], streams: list[Script]) -> None:
        self.lists, self.streams = lists, streams
        self.listed = asyncio.Event()
        self.requests: list[notify_pb2.SubscribeRequest] = []

    def __getattr__(self, rpc: str) -> Callable[[Any, Any], Awaitable[None]]:
        async def unimplemented(request: Any, context: Any) -> None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"the fake has no {rpc}")

        return unimplemented

    async def ListBookings(self, request: Any, context: Any) -> booking_pb2.ListBookingsResponse:
        self.listed.set()
        return booking_pb2.ListBookingsResponse(bookings=self.lists.pop(0))

    async def Subscribe(self, request: notify_pb2.SubscribeRequest, context: Any) -> AsyncIterator[Any]:
        self.requests.append(request)
        await context.send_initial_metadata((("x-stream-position", "1-0"),))
        async for item in self.streams.pop(0)(request, context):
            yield item


async def serve(fake: Fake) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    booking_pb2_grpc.add_BookingServiceServicer_to_server(fake, server)  # type: ignore[arg-type]
    notify_pb2_grpc.add_NotifyServiceServicer_to_server(fake, server)  # type: ignore[arg-type]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def forever(*_: Any) -> AsyncIterator[Any]:
    await asyncio.Event().wait()
    yield


def after(gate: asyncio.Event, *items: Any, then: Callable[[Any], Awaitable[None]] | None = None) -> Script:
    """A stream that sends `items` once `gate` is set, then ends with `then(context)` or stays open."""

    async def play(_: Any, context: Any) -> AsyncIterator[Any]:
        await gate.wait()
        for item in items:
            yield item
        if then is not None:
            await then(context)
        await asyncio.Event().wait()

    return play


async def next_change(changes: Any) -> Change:
    change: Change = await asyncio.wait_for(anext(changes), 10)
    return change


async def test_an_event_the_list_already_showed_makes_no_updated_change() -> None:
    read_first = asyncio.Event()
    x2 = booking("x", 2)
    late = response("1-1", events_pb2.BOOKING_EVENT_TYPE_UPDATED, x2)  # x's change to v2, after the list showed v2
    marker = response("1-2", events_pb2.BOOKING_EVENT_TYPE_CREATED, booking("z", 1))
    fake = Fake([[x2]], [after(read_first, late, marker)])
    server, address = await serve(fake)
    try:
        async with BookingClient(address, address, token="t") as client, client.informer() as informer:
            changes = informer.changes()
            assert (await next_change(changes)) == Change("added", x2)
            read_first.set()
            assert (await next_change(changes)).booking.id == "z"  # not an "updated" of x to the same state
            assert informer.get("x") == x2
    finally:
        await server.stop(None)


async def test_an_update_carries_the_previous_and_the_new_state() -> None:
    read_first = asyncio.Event()
    x1, x2 = booking("x", 1), booking("x", 2)
    x2.notes = "moved"
    fake = Fake([[x1]], [after(read_first, response("1-1", events_pb2.BOOKING_EVENT_TYPE_UPDATED, x2))])
    server, address = await serve(fake)
    try:
        async with BookingClient(address, address, token="t") as client, client.informer() as informer:
            changes = informer.changes()
            assert (await next_change(changes)) == Change("added", x1)
            read_first.set()
            assert (await next_change(changes)) == Change("updated", x2, previous=x1)
    finally:
        await server.stop(None)


async def test_a_booking_gone_between_a_lost_stream_and_the_re_list_is_removed() -> None:
    read_both = asyncio.Event()
    x, y = booking("x", 1), booking("y", 1)

    async def expire(context: Any) -> None:
        await context.abort(grpc.StatusCode.OUT_OF_RANGE, "the stream no longer holds what follows the cursor")

    # x is hard-deleted while the stream is lost (its event with it): only the re-list can tell.
    fake = Fake([[x, y], [y]], [after(read_both, then=expire), forever])
    server, address = await serve(fake)
    try:
        async with BookingClient(address, address, token="t") as client, client.informer() as informer:
            changes = informer.changes()
            assert {(await next_change(changes)).booking.id for _ in range(2)} == {"x", "y"}
            read_both.set()
            assert (await next_change(changes)) == Change("removed", x)
            assert [b.id for b in informer.items()] == ["y"] and informer.lists == 2
    finally:
        await server.stop(None)


async def test_a_resumed_stream_that_repeats_the_cursor_event_yields_it_once() -> None:
    go = asyncio.Event()
    go.set()
    first = [response(f"1-{n}", events_pb2.BOOKING_EVENT_TYPE_CREATED, booking(f"b{n}", 1)) for n in (1, 2)]

    async def unavailable(context: Any) -> None:
        await context.abort(grpc.StatusCode.UNAVAILABLE, "instance going away")

    # The second stream starts at the cursor's own event (as a server that resumes inclusively would).
    again = [first[1], response("1-3", events_pb2.BOOKING_EVENT_TYPE_CREATED, booking("b3", 1))]
    fake = Fake([], [after(go, *first, then=unavailable), after(go, *again)])
    server, address = await serve(fake)
    try:
        async with BookingClient(address, address, token="t") as client:
            watch = client.watch()
            seen = [await asyncio.wait_for(anext(watch), 10) for _ in range(3)]
            await watch.aclose()
    finally:
        await server.stop(None)
    assert [e.event_id for e in seen] == ["1-1", "1-2", "1-3"]
    assert [r.resume_after for r in fake.requests] == ["", "1-2"]


async def test_a_schedule_change_between_booking_events_moves_the_cursor_without_being_yielded() -> None:
    go = asyncio.Event()
    go.set()
    schedule_change = notify_pb2.SubscribeResponse(
        schedule_events=[events_pb2.ScheduleEvent(event_id="1-2", type=events_pb2.SCHEDULE_EVENT_TYPE_UPDATED)]
    )

    async def unavailable(context: Any) -> None:
        await context.abort(grpc.StatusCode.UNAVAILABLE, "instance going away")

    first = [response("1-1", events_pb2.BOOKING_EVENT_TYPE_CREATED, booking("b1", 1)), schedule_change]
    fake = Fake(
        [],
        [
            after(go, *first, then=unavailable),
            after(go, response("1-3", events_pb2.BOOKING_EVENT_TYPE_CREATED, booking("b3", 1))),
        ],
    )
    server, address = await serve(fake)
    try:
        async with BookingClient(address, address, token="t") as client:
            watch = client.watch()
            seen = [await asyncio.wait_for(anext(watch), 10) for _ in range(2)]
            await watch.aclose()
    finally:
        await server.stop(None)
    assert [e.event_id for e in seen] == ["1-1", "1-3"]
    assert [r.resume_after for r in fake.requests] == ["", "1-2"]  # resumed after the schedule change
