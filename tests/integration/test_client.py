"""booking_client.BookingClient against real services: every method maps its RPC, every error its exception;
deadlines, request ids, tokens, and retries of what is safe to retry."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
import pytest

import booking_client
from booking_api.booking.v1 import booking_pb2
from booking_client import BookingClient
from tests.support.events import EventSystem
from tests.support.helpers import fresh_slot, token, uid
from tests.support.servers import ServiceProcess

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
async def services(system: EventSystem) -> tuple[ServiceProcess, ServiceProcess]:
    return system.booking(), system.notify()


def client_for(
    services: tuple[ServiceProcess, ServiceProcess], role: str, sub: str, **options: object
) -> BookingClient:
    booking, notify = services
    return BookingClient(booking.address, notify.address, token=token(role, sub), **options)  # type: ignore[arg-type]


@pytest.fixture
async def admin(services: tuple[ServiceProcess, ServiceProcess]) -> AsyncIterator[BookingClient]:
    async with client_for(services, "admin", uid("admin")) as client:
        yield client


async def test_every_booking_method_maps_its_rpc(
    services: tuple[ServiceProcess, ServiceProcess], admin: BookingClient
) -> None:
    alice_id, provider = uid("alice"), uid("prov")
    async with client_for(services, "user", alice_id) as alice:
        made = []
        for _ in range(5):
            start, end = fresh_slot()
            made.append(
                await alice.create_booking(
                    service_id="haircut", provider_id=provider, start_time=start, end_time=end, notes="n"
                )
            )
        assert all(b.customer_id == alice_id and b.etag for b in made)
        assert await alice.get_booking(made[0].id) == made[0]
        # list_bookings pages through everything (page size 2: three pages).
        listed = [b async for b in alice.list_bookings(provider_id=provider, page_size=2)]
        assert [b.id for b in listed] == [b.id for b in sorted(made, key=lambda b: b.start_time.ToDatetime())]

        deleted = await alice.delete_booking(made[0].id, reason="plans changed", etag=made[0].etag)
        assert deleted.deletion_reason == "plans changed" and deleted.HasField("delete_time")
        assert [b.id async for b in admin.list_deleted_bookings(customer_id=alice_id)] == [made[0].id]
        restored = await admin.restore_booking(made[0].id, etag=deleted.etag)
        assert not restored.HasField("delete_time")
        await admin.delete_booking(made[1].id)
        assert await admin.hard_delete_booking(made[1].id) == made[1].id
        trail = [e async for e in admin.list_booking_audit_entries(made[0].id, page_size=1)]
        assert [booking_client_action(e.action) for e in trail] == ["CREATED", "DELETED", "RESTORED"]

        await admin.delete_booking(made[2].id)
        future = datetime.now(UTC) + timedelta(days=1)
        preview = await admin.purge_deleted_bookings(future)
        assert preview.count >= 1 and (made[2].id in preview.sample or preview.count > len(preview.sample))
        purged = await admin.purge_deleted_bookings(future, force=True)
        assert purged.count == preview.count
        assert (await admin.purge_deleted_bookings(future)).count == 0
        with pytest.raises(booking_client.NotFound):
            await admin.get_booking(made[2].id)


async def test_the_calendar_methods_move_list_a_window_and_find_free_time(admin: BookingClient) -> None:
    provider, hour = uid("prov"), timedelta(hours=1)
    day, _ = fresh_slot(hours=24)
    first = await admin.create_booking(
        service_id="haircut", provider_id=provider, customer_id="c", start_time=day, end_time=day + hour
    )
    second = await admin.create_booking(
        service_id="haircut", provider_id=provider, customer_id="c", start_time=day + 2 * hour, end_time=day + 3 * hour
    )
    moved = await admin.reschedule(first.id, day + 4 * hour, day + 5 * hour, etag=first.etag)
    assert moved.id == first.id and moved.start_time.ToDatetime(tzinfo=UTC) == day + 4 * hour
    with pytest.raises(booking_client.SlotUnavailable):
        await admin.reschedule(first.id, day + 2 * hour, day + 3 * hour)
    with pytest.raises(booking_client.EtagMismatch):
        await admin.update_booking(first.id, notes="late", etag=first.etag)
    noted = await admin.update_booking(first.id, notes="late")
    assert noted.notes == "late" and noted.start_time == moved.start_time
    window = (day + 2 * hour + hour / 2, day + 4 * hour + hour / 2)
    assert [b.id async for b in admin.list_bookings(provider_id=provider, overlaps=window)] == [second.id, first.id]
    free = await admin.list_available_slots(provider, day, day + 6 * hour, timedelta(minutes=30))
    gaps = [(day, day + 2 * hour), (day + 3 * hour, day + 4 * hour), (day + 5 * hour, day + 6 * hour)]
    assert free.free_intervals == gaps
    assert free.time_zone == "UTC" and free.slot_starts[:4] == [day, day + hour / 2, day + hour, day + 3 * hour / 2]
    await admin.delete_booking(second.id)
    with pytest.raises(booking_client.BookingDeleted):
        await admin.update_booking(second.id, notes="x")


def booking_client_action(action: booking_pb2.AuditAction.ValueType) -> str:
    return booking_pb2.AuditAction.Name(action).removeprefix("AUDIT_ACTION_")


async def test_each_refusal_raises_the_exception_of_its_reason_with_the_details(
    services: tuple[ServiceProcess, ServiceProcess], admin: BookingClient
) -> None:
    provider = uid("prov")
    start, end = fresh_slot()
    async with client_for(services, "user", uid("bob")) as bob:
        first = await bob.create_booking(service_id="haircut", provider_id=provider, start_time=start, end_time=end)
        with pytest.raises(booking_client.SlotUnavailable) as taken:
            await bob.create_booking(service_id="haircut", provider_id=provider, start_time=start, end_time=end)
        assert taken.value.code.name == "ALREADY_EXISTS" and taken.value.reason == "SLOT_UNAVAILABLE"
        assert taken.value.domain == "booking.v1" and taken.value.request_id
        with pytest.raises(booking_client.InvalidArgument) as invalid:
            await bob.create_booking(service_id="haircut", provider_id=provider, start_time=end, end_time=start)
        assert any(v.field.endswith("end_time") for v in invalid.value.field_violations), invalid.value
        with pytest.raises(booking_client.NotFound):
            await bob.get_booking(str(uuid.uuid4()))
        with pytest.raises(booking_client.EtagMismatch):
            await bob.delete_booking(first.id, etag='"999"')
        with pytest.raises(booking_client.AdminOnly):
            await bob.hard_delete_booking(first.id)
        with pytest.raises(booking_client.NotOwnBooking):
            await bob.create_booking(
                service_id="haircut",
                provider_id=provider,
                customer_id="someone-else",
                start_time=end,
                end_time=end + timedelta(hours=1),
            )
        other_start, other_end = fresh_slot()
        await bob.create_booking(
            service_id="haircut", provider_id=provider, start_time=other_start, end_time=other_end, request_id="r1"
        )
        with pytest.raises(booking_client.RequestIdReused):
            later = other_end + timedelta(days=1)
            await bob.create_booking(
                service_id="haircut",
                provider_id=provider,
                start_time=later,
                end_time=later + timedelta(hours=1),
                request_id="r1",
            )
    with pytest.raises(booking_client.BookingNotDeleted):
        await admin.hard_delete_booking(first.id)
    booking, notify = services
    async with BookingClient(booking.address, notify.address, token="not-a-jwt") as stranger:
        with pytest.raises(booking_client.Unauthenticated) as refused:
            await stranger.get_booking(first.id)
    assert refused.value.reason == "INVALID_TOKEN" and "UNAUTHENTICATED (INVALID_TOKEN)" in str(refused.value)


async def test_the_token_may_be_a_callable_asked_on_every_call_sync_or_async(
    services: tuple[ServiceProcess, ServiceProcess],
) -> None:
    booking, notify = services
    asked: list[str] = []

    async def fresh() -> str:
        asked.append("async")
        return token("admin", "ops")

    async with BookingClient(booking.address, notify.address, token=fresh) as client:
        await client.create_booking(
            service_id="haircut",
            provider_id=uid("prov"),
            customer_id=uid("cust"),
            start_time=fresh_slot()[0],
            end_time=fresh_slot()[0] + timedelta(hours=1),
        )
        assert [b async for b in client.list_bookings(provider_id="nobody")] == []
    assert asked == ["async", "async"]
    async with BookingClient(booking.address, token=lambda: token("admin", "ops")) as client:
        assert [b async for b in client.list_bookings(provider_id="nobody")] == []


async def test_a_read_is_retried_through_an_outage_and_a_delete_is_not(
    services: tuple[ServiceProcess, ServiceProcess], admin: BookingClient
) -> None:
    booking, _ = services
    start, end = fresh_slot()
    made = await admin.create_booking(
        service_id="haircut", provider_id=uid("prov"), customer_id=uid("c"), start_time=start, end_time=end
    )
    booking.stop()
    async with client_for(services, "admin", "ops", retries=0) as impatient:
        with pytest.raises(booking_client.Unavailable):
            await impatient.delete_booking(made.id)
    # The service comes back within the retries' reach (8 tries, up to 2 s apart).
    restart = asyncio.create_task(asyncio.to_thread(booking.start))
    async with client_for(services, "admin", "ops", retries=8, backoff=booking_client.Backoff(0.2, 2.0)) as patient:
        assert (await patient.get_booking(made.id)).id == made.id
    await restart
    # Non-idempotent calls are not retried: against a stopped service a delete fails at once.
    booking.stop()
    async with client_for(services, "admin", "ops", retries=8) as client:
        started = asyncio.get_running_loop().time()
        with pytest.raises(booking_client.Unavailable):
            await client.delete_booking(made.id)
        assert asyncio.get_running_loop().time() - started < 2.0
    booking.start()


async def test_a_create_carries_a_request_id_so_repeating_it_makes_one_booking(
    system: EventSystem, services: tuple[ServiceProcess, ServiceProcess], admin: BookingClient
) -> None:
    """The client gives CreateBooking a request_id when the caller does not (it is stored with the booking), and
    the server answers a repeated request_id with the booking it made: a retried create never books twice."""
    start, end = fresh_slot()
    provider, customer = uid("prov"), uid("cust")
    made = await admin.create_booking(
        service_id="haircut", provider_id=provider, customer_id=customer, start_time=start, end_time=end
    )
    conn = await asyncpg.connect(system.database_url)
    try:
        stored = await conn.fetchval("SELECT request_id FROM bookings WHERE id = $1", uuid.UUID(made.id))
    finally:
        await conn.close()
    assert isinstance(stored, str) and len(stored) == 32
    again = await admin.create_booking(
        service_id="haircut",
        provider_id=provider,
        customer_id=customer,
        start_time=start,
        end_time=end,
        request_id=stored,
    )
    assert again.id == made.id
    assert [b.id async for b in admin.list_bookings(provider_id=provider)] == [made.id]


async def test_a_call_past_its_deadline_raises_deadline_exceeded(
    services: tuple[ServiceProcess, ServiceProcess],
) -> None:
    booking, _ = services
    booking.signal(signal.SIGSTOP)
    try:
        async with client_for(services, "admin", "ops", retries=0) as client:
            with pytest.raises(booking_client.DeadlineExceeded):
                await client.get_booking(str(uuid.uuid4()), timeout=0.5)
    finally:
        booking.signal(signal.SIGCONT)


async def test_a_read_cancelled_by_the_server_is_retried() -> None:
    """grpc core ends calls a shutting-down server had received but not yet handed to the service as CANCELLED
    (grpc/grpc#41785): for the client, that is an instance going away, retried like UNAVAILABLE."""
    tries = 0

    async def get(request: booking_pb2.GetBookingRequest, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        nonlocal tries
        tries += 1
        if tries == 1:
            await context.abort(grpc.StatusCode.CANCELLED, "CANCELLED")
        return booking_pb2.GetBookingResponse(booking=booking_pb2.Booking(id=request.booking_id))

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "booking.v1.BookingService",
                {
                    "GetBooking": grpc.unary_unary_rpc_method_handler(
                        get,
                        request_deserializer=booking_pb2.GetBookingRequest.FromString,
                        response_serializer=booking_pb2.GetBookingResponse.SerializeToString,
                    )
                },
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with BookingClient(f"127.0.0.1:{port}", token="t", backoff=booking_client.Backoff(0.01, 0.05)) as client:
            assert (await client.get_booking("b-1")).id == "b-1"
        assert tries == 2
    finally:
        await server.stop(None)
