"""Hardening against single users, rows and faults that could stop service for everyone: booking times the
database cannot round-trip, an outbox row the relay cannot read, forged page tokens, request_id replays."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime

import asyncpg
import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc

from booking_api.booking.v1 import booking_pb2, booking_pb2_grpc
from devtools.servers import SERVICE_ROLE, as_role, free_port
from tests.support.events import EventSystem, Subscription
from tests.support.helpers import Caller, expect_error, field_violations, fresh_slot, ts, uid
from tests.support.servers import ServiceProcess, booking_env, refused_start

Callers = Callable[[str, str], Caller]


def _stamp(seconds: int, nanos: int = 0) -> Timestamp:
    return Timestamp(seconds=seconds, nanos=nanos)


EPOCH = 0
YEAR_9999 = int(datetime(9999, 1, 1, tzinfo=UTC).timestamp())
YEAR_1 = int(datetime(1, 1, 1, tzinfo=UTC).timestamp())
LAST_TIMESTAMP = int(datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp())
SOON = int(datetime(2032, 3, 1, tzinfo=UTC).timestamp())


@pytest.mark.parametrize(
    ("start", "end", "field", "words"),
    [
        (_stamp(YEAR_1), _stamp(SOON), "booking.start_time", "from 1970"),
        (_stamp(EPOCH - 1), _stamp(SOON), "booking.start_time", "from 1970"),
        (_stamp(SOON), _stamp(LAST_TIMESTAMP, 999_999_999), "booking.end_time", "whole microseconds"),
        (_stamp(SOON), _stamp(LAST_TIMESTAMP, 999_999_000), "booking.end_time", "from 1970"),
        (_stamp(SOON), _stamp(YEAR_9999), "booking.end_time", "from 1970"),
        (_stamp(SOON), _stamp(SOON + 1, 500), "booking.end_time", "whole microseconds"),
        (_stamp(SOON, 100), _stamp(SOON + 1), "booking.start_time", "whole microseconds"),
        (_stamp(SOON), _stamp(SOON, 800), "booking.end_time", "whole microseconds"),
    ],
)
async def test_booking_times_out_of_range_or_finer_than_microseconds_are_invalid_argument(
    caller: Callers, start: Timestamp, end: Timestamp, field: str, words: str
) -> None:
    alice = caller("user", uid("alice"))
    request = booking_pb2.CreateBookingRequest(
        booking=booking_pb2.Booking(provider_id=uid("prov"), service_id="cut", start_time=start, end_time=end)
    )
    error = await expect_error(alice.call("CreateBooking", request), grpc.StatusCode.INVALID_ARGUMENT)
    assert words in field_violations(error)[field]


async def test_the_edges_of_the_time_range_round_trip_exactly(caller: Callers) -> None:
    root = caller("admin", uid("root"))  # 1970 is in the past: an admin's backfill
    start = datetime(1970, 1, 1, tzinfo=UTC)
    end = datetime(9998, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)
    provider = uid("prov")
    booking = await root.create(provider_id=provider, customer_id=uid("alice"), start=start, end=end)
    assert (booking.start_time, booking.end_time) == (ts(start), ts(end))
    assert await root.get(booking.id) == booking
    listed = await root.list_all(provider_id=provider, page_size=1)
    assert listed == [booking.id]


async def test_the_database_refuses_times_out_of_range_from_anyone_else(db: asyncpg.Connection) -> None:
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute(
            "INSERT INTO bookings (id, customer_id, provider_id, service_id, start_time, end_time, created_by)"
            " VALUES (gen_random_uuid(), 'c', $1, 's', '-infinity', '2030-01-01', 'c')",
            uid("prov"),
        )


async def test_an_event_the_relay_cannot_read_is_set_aside_and_every_later_event_is_delivered(
    system: EventSystem,
) -> None:
    booking = system.booking()
    notifier = system.notify()
    live = Subscription("admin", uid("ops"))
    await live.open(notifier.address)
    conn = await asyncpg.connect(system.database_url)
    try:
        await conn.execute(
            "INSERT INTO booking_outbox (event_type, booking, actor_id, actor_name, actor_role)"
            """ VALUES ('CREATED', '{"id": "x", "start_time": "infinity"}', 'evil', 'evil', 'user')"""
        )
        async with grpc.aio.insecure_channel(booking.address) as channel:
            admin = Caller(booking_pb2_grpc.BookingServiceStub(channel), "admin", uid("admin"))
            made = [(await admin.create(provider_id=uid("prov"), customer_id=uid("cust"))).id for _ in range(3)]
        committed = await system.wait_relayed(4)
        poison, *good = committed
        await live.wait_for(good[-1][0], within=30)
        assert [e.booking.id for e in live.events] == made
        assert live.ids == [event_id for event_id, _, _ in good]

        history = Subscription("admin", uid("ops"))
        await history.open(notifier.address, filters={"resume_after": "0-0"})
        await history.wait_for(good[-1][0], within=30)
        assert history.ids == live.ids
        await history.close()

        dead = await conn.fetch("SELECT seq, stream_ms, error FROM booking_outbox_dead")
        assert [f"{r['stream_ms']}-{r['seq']}" for r in dead] == [poison[0]]
        assert "infinity" in dead[0]["error"]
    finally:
        await live.close()
        await conn.close()


def _forge(query: str, key: list[object]) -> str:
    raw = json.dumps({"q": query, "k": key}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


async def test_forged_or_corrupted_page_tokens_are_invalid_argument(caller: Callers) -> None:
    alice = caller("user", uid("alice"))
    for _ in range(3):
        await alice.create(provider_id=uid("prov"))
    first = await alice.call("ListBookings", booking_pb2.ListBookingsRequest(page_size=1))
    genuine = first.next_page_token
    assert genuine
    body, _, _ = genuine.partition(".")
    query = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))["q"]
    forged = [
        _forge(query, ["0001-01-01T00:00:00+23:59", "00000000-0000-0000-0000-000000000000"]),
        _forge(query, ["9999-12-31T23:59:59.999999+00:00", "00000000-0000-0000-0000-000000000000"]),
        genuine[:-2] + ("AA" if not genuine.endswith("AA") else "BB"),
        genuine + "x",
        body,
        f"{body}.",
    ]
    for token in forged:
        request = booking_pb2.ListBookingsRequest(page_size=1, page_token=token)
        error = await expect_error(
            alice.call("ListBookings", request), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN"
        )
        assert "page_token" in field_violations(error)
    second = await alice.call("ListBookings", booking_pb2.ListBookingsRequest(page_size=1, page_token=genuine))
    assert len(second.bookings) == 1 and second.bookings[0].id != first.bookings[0].id


async def test_replaying_a_request_id_never_shows_what_the_caller_may_no_longer_see(caller: Callers) -> None:
    alice, admin, bob = caller("user", uid("alice")), caller("admin", uid("admin")), caller("user", uid("bob"))
    provider = uid("prov")
    start, end = fresh_slot()
    booking = await alice.create(provider_id=provider, start=start, end=end, request_id="replay-1")
    again = await alice.create(provider_id=provider, start=start, end=end, request_id="replay-1")
    assert again == booking
    await admin.delete(booking.id, reason="fraud suspected")
    await bob.create(provider_id=provider, start=start, end=end)
    error = await expect_error(
        alice.create(provider_id=provider, start=start, end=end, request_id="replay-1"),
        grpc.StatusCode.NOT_FOUND,
        "BOOKING_NOT_FOUND",
    )
    assert "fraud" not in (error.details() or "") and admin.id not in str(error.trailing_metadata())
    # An admin replaying its own request_id still gets what it may see, deletion details included.
    made = await admin.create(provider_id=uid("prov"), customer_id=uid("cust"), start=start, end=end, request_id="r")
    await admin.delete(made.id, reason="test")
    replayed = await admin.create(
        provider_id=made.provider_id, customer_id=made.customer_id, start=start, end=end, request_id="r"
    )
    assert replayed.id == made.id and replayed.deletion_reason == "test"


async def test_health_list_answers_every_name_on_both_services(
    booking_server: ServiceProcess, system: EventSystem
) -> None:
    notifier = system.notify()
    wanted = {
        booking_server.address: {"", "booking.v1.BookingService", "events", "liveness"},
        notifier.address: {"", "notify.v1.NotifyService", "events", "redis", "liveness"},
    }
    for address, names in wanted.items():
        async with grpc.aio.insecure_channel(address) as channel:
            listed = await health_pb2_grpc.HealthStub(channel).List(health_pb2.HealthListRequest(), timeout=10)
        assert set(listed.statuses) == names
        assert all(s.status == health_pb2.HealthCheckResponse.SERVING for s in listed.statuses.values())


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize(
    ("module", "taken"),
    [("booking_service", "grpc"), ("notify_service", "grpc"), ("notify_service", "metrics")],
)
def test_a_port_in_use_gives_one_clear_line_and_exit_status_2(
    booking_server: ServiceProcess, booking_db_url: str, redis_url: str, module: str, taken: str, workers: str
) -> None:
    """The gRPC address, or METRICS_LISTEN's, already taken (here by the shared booking server)."""
    env = {**booking_env(booking_db_url, redis_url), "WORKERS": workers}
    listen = booking_server.address
    if taken == "metrics":
        env["METRICS_LISTEN"], listen = booking_server.address, f"127.0.0.1:{free_port()}"
    stderr = refused_start(module, env, listen)
    what = "cannot listen on" if taken == "grpc" else "cannot serve metrics on"
    assert f"{what} {booking_server.address}" in stderr


async def test_the_service_role_can_only_read_and_append_to_the_audit_trail(
    booking_server: ServiceProcess, booking_db_url: str, caller: Callers
) -> None:
    admin = caller("admin", uid("admin"))
    active = await admin.create(provider_id=uid("prov"), customer_id=uid("cust"))
    service = await asyncpg.connect(as_role(booking_db_url, SERVICE_ROLE))
    try:
        users = await service.fetch(
            "SELECT DISTINCT usename FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name LIKE 'booking_service%'"
        )
        assert [r["usename"] for r in users] == [SERVICE_ROLE]
        assert await service.fetchval("SELECT count(*) FROM booking_audit WHERE booking_id = $1", active.id) == 1
        for statement in (
            "DELETE FROM booking_audit",
            "UPDATE booking_audit SET reason = 'rewritten'",
            "UPDATE booking_audit SET snapshot = NULL",
            "TRUNCATE booking_audit",
            "ALTER TABLE booking_audit DISABLE TRIGGER ALL",
            "DROP TRIGGER booking_audit_append_only ON booking_audit",
            "CREATE TABLE sneaky (id int)",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await service.execute(statement)
        # The one way to erase snapshots leaves those of active bookings alone.
        assert await service.fetchval("SELECT booking_audit_erase_snapshots($1::uuid[])", [active.id]) == 0
        assert await service.fetchval(
            "SELECT count(*) FROM booking_audit WHERE booking_id = $1 AND snapshot IS NOT NULL", active.id
        )
    finally:
        await service.close()
