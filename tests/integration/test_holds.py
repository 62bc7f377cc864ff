"""Holds (HoldSlot, ConfirmBooking) through the real service: a hold occupies its slot like a booking, under
concurrency too; its expiry is exact to the database's clock, with or without the sweep; a confirm racing the
expiry or a competing create has one outcome; confirms repeat safely; holds are bounded; who sees and does what;
and every transition's audit entry and event, the event also through a Redis outage."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
import pytest

from booking_api.booking.v1 import booking_pb2, events_pb2
from booking_service.sql import HOLD_SQL
from tests.integration.test_schedules import berlin, next_weekday, put, schedule
from tests.support.events import EventSystem, Subscription, admin_on, eventually
from tests.support.helpers import Caller, error_infos, expect_error, field_violations, fresh_slot, uid
from tests.support.servers import ServiceProcess

Callers = Callable[[str, str], Caller]
HELD, CONFIRMED = booking_pb2.BOOKING_STATE_HELD, booking_pb2.BOOKING_STATE_CONFIRMED
pytestmark = pytest.mark.timeout(120)


async def database_now(db: asyncpg.Connection) -> datetime:
    now: datetime = await db.fetchval("SELECT clock_timestamp()")
    return now


async def until_database_time(db: asyncpg.Connection, moment: datetime) -> None:
    """Wait until the database's clock has reached `moment` (the clock that decides expiry)."""
    for _ in range(100):
        now = await database_now(db)
        if now >= moment:
            return
        await asyncio.sleep((moment - now).total_seconds())
    raise AssertionError(f"the database's clock did not reach {moment}")


async def audit_actions(db: asyncpg.Connection, booking_id: str) -> list[str]:
    rows = await db.fetch("SELECT action FROM booking_audit WHERE booking_id = $1 ORDER BY seq", uuid.UUID(booking_id))
    return [r["action"] for r in rows]


async def outbox_types(db: asyncpg.Connection, booking_id: str) -> list[str]:
    rows = await db.fetch("SELECT event_type FROM booking_outbox WHERE booking->>'id' = $1 ORDER BY id", booking_id)
    return [r["event_type"] for r in rows]


async def test_a_hold_occupies_its_slot_until_confirmed_and_is_seen_by_its_customer_provider_and_admins(
    caller: Callers, db: asyncpg.Connection
) -> None:
    customer, provider, admin = caller("user", uid("u")), caller("provider", uid("prov")), caller("admin", uid("ops"))
    stranger = caller("user", uid("u"))
    start, end = fresh_slot()
    before = await database_now(db)
    held = await customer.hold(provider_id=provider.id, start=start, end=end, ttl=timedelta(minutes=2))
    assert held.state == HELD and held.customer_id == customer.id
    expires = held.expire_time.ToDatetime(UTC)
    assert before + timedelta(minutes=2) <= expires <= await database_now(db) + timedelta(minutes=2)
    # Its slot is taken, for a booking and for another hold; the slot list shows it busy.
    await expect_error(admin.create(provider_id=provider.id, customer_id="c", start=start, end=end),
                       grpc.StatusCode.ALREADY_EXISTS, "SLOT_UNAVAILABLE")  # fmt: skip
    await expect_error(stranger.hold(provider_id=provider.id, start=start, end=end),
                       grpc.StatusCode.ALREADY_EXISTS, "SLOT_UNAVAILABLE")  # fmt: skip
    free = await stranger.free(provider.id, start - timedelta(hours=1), end + timedelta(hours=1), timedelta(hours=1))
    assert free == [(start - timedelta(hours=1), start), (end, end + timedelta(hours=1))]
    # Its customer, its provider and admins see it, with its state; others do not.
    for who in (customer, provider, admin):
        assert (await who.get(held.id)).state == HELD
        assert held.id in await who.list_all(provider_id=provider.id)
    await expect_error(stranger.get(held.id), grpc.StatusCode.NOT_FOUND, "BOOKING_NOT_FOUND")
    assert held.id not in await stranger.list_all(provider_id=provider.id)
    # Confirmed: the same booking, CONFIRMED, no expiry, the checkout's notes.
    confirmed = await customer.confirm(held.id, etag=held.etag, notes="paid by card")
    assert (confirmed.id, confirmed.state, confirmed.notes) == (held.id, CONFIRMED, "paid by card")
    assert not confirmed.HasField("expire_time") and confirmed.etag != held.etag
    await expect_error(customer.confirm(held.id), grpc.StatusCode.FAILED_PRECONDITION, "NOT_HELD")
    assert await audit_actions(db, held.id) == ["HELD", "CONFIRMED"]
    assert await outbox_types(db, held.id) == ["HELD", "CONFIRMED"]


async def test_of_100_concurrent_holds_and_creates_for_one_slot_exactly_one_succeeds(
    caller: Callers, db: asyncpg.Connection
) -> None:
    provider_id, admin = uid("prov"), caller("admin", uid("ops"))
    start, end = fresh_slot()

    async def attempt(n: int) -> str | None:
        try:
            if n % 2:
                made = await caller("user", uid("u")).hold(provider_id=provider_id, start=start, end=end)
            else:
                made = await admin.create(provider_id=provider_id, customer_id=uid("c"), start=start, end=end)
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.ALREADY_EXISTS, error
            return None
        return made.id

    won = [made for made in await asyncio.gather(*(attempt(n) for n in range(100))) if made]
    assert len(won) == 1
    active = await db.fetchval(
        "SELECT count(*) FROM bookings WHERE provider_id = $1 AND delete_time IS NULL", provider_id
    )
    assert active == 1


async def test_expiry_is_exact_to_the_database_clock_without_any_sweep(
    system: EventSystem, channels: list[grpc.aio.Channel]
) -> None:
    """With the sweep off, a create at an expired hold's expire_time, a hold there and a move there succeed at
    once: the write retires the hold it needs. Then the hold is gone from lists, free in the slot list, and
    neither confirmed nor restored (HOLD_EXPIRED); the unneeded expired hold stays unretired but unlisted."""
    booking = system.booking(HOLDS_SWEEP_SECONDS="0")
    admin = await admin_on(booking, channels)
    customer = Caller(admin.stub, "user", uid("u"))
    provider_id = uid("prov")
    db = await asyncpg.connect(system.database_url)
    try:
        slots = [fresh_slot() for _ in range(4)]
        holds = [
            await customer.hold(provider_id=provider_id, start=a, end=b, ttl=timedelta(seconds=1)) for a, b in slots
        ]
        expire = max(h.expire_time.ToDatetime(UTC) for h in holds)
        # One microsecond before its expire_time the hold still stands (the database's clock decides).
        await until_database_time(db, holds[0].expire_time.ToDatetime(UTC) - timedelta(milliseconds=300))
        await expect_error(admin.create(provider_id=provider_id, customer_id="c", start=slots[0][0], end=slots[0][1]),
                           grpc.StatusCode.ALREADY_EXISTS, "SLOT_UNAVAILABLE")  # fmt: skip
        await until_database_time(db, expire)
        created = await admin.create(provider_id=provider_id, customer_id="c", start=slots[0][0], end=slots[0][1])
        rehold = await caller_hold(customer, provider_id, slots[1])
        other = await admin.create(provider_id=provider_id, customer_id="c", start=slots[0][1],
                                   end=slots[0][1] + timedelta(hours=1))  # fmt: skip
        moved = await admin.update(other.id, "start_time", "end_time", start=slots[2][0], end=slots[2][1])
        assert created.state == CONFIRMED and rehold.state == HELD and moved.start_time == holds[2].start_time
        for retired in holds[:3]:
            row: Any = await db.fetchrow("SELECT * FROM bookings WHERE id = $1", uuid.UUID(retired.id))
            assert row["delete_time"] is not None and row["deletion_reason"] == "hold expired"
            assert row["deleted_by_id"] == "system:hold-expiry" and row["state"] == "HELD"
            assert await audit_actions(db, retired.id) == ["HELD", "EXPIRED"]
            assert await outbox_types(db, retired.id) == ["HELD", "EXPIRED"]
        # The fourth, needed by nobody, is not retired (no sweep) but no longer listed, and its slot is free.
        fourth = holds[3]
        assert await db.fetchval("SELECT delete_time FROM bookings WHERE id = $1", uuid.UUID(fourth.id)) is None
        listed = await customer.list_all(provider_id=provider_id)
        assert fourth.id not in listed and holds[0].id not in listed and rehold.id in listed
        free = await customer.free(provider_id, slots[3][0], slots[3][1], timedelta(hours=1))
        assert len(free) == 1
        for expired in (holds[0], fourth):
            await expect_error(customer.confirm(expired.id), grpc.StatusCode.FAILED_PRECONDITION, "HOLD_EXPIRED")
        await admin.delete(fourth.id, reason="cleanup")
        for expired in (holds[0], fourth):
            await expect_error(admin.restore(expired.id), grpc.StatusCode.FAILED_PRECONDITION, "HOLD_EXPIRED")
        # Listed as deleted like any deleted booking.
        deleted = await admin.list_all("ListDeletedBookings", provider_id=provider_id)
        assert {holds[0].id, fourth.id} <= set(deleted)
    finally:
        await db.close()


async def caller_hold(who: Caller, provider_id: str, slot: tuple[datetime, datetime]) -> booking_pb2.Booking:
    return await who.hold(provider_id=provider_id, start=slot[0], end=slot[1])


async def test_the_sweep_retires_expired_holds_within_a_second_and_writes_their_events(
    caller: Callers, db: asyncpg.Connection
) -> None:
    customer = caller("user", uid("u"))
    held = [
        await customer.hold(provider_id=uid("prov"), start=a, end=b, ttl=timedelta(seconds=1))
        for a, b in (fresh_slot(), fresh_slot())
    ]
    await until_database_time(db, max(h.expire_time.ToDatetime(UTC) for h in held))
    for hold in held:

        async def retired(booking_id: str = hold.id) -> bool:
            found = await db.fetchval("SELECT delete_time FROM bookings WHERE id = $1", uuid.UUID(booking_id))
            return found is not None

        await eventually(retired, lambda: "the sweep", within=5)
        row: Any = await db.fetchrow("SELECT delete_time, expire_time FROM bookings WHERE id = $1", uuid.UUID(hold.id))
        assert row["delete_time"] - row["expire_time"] < timedelta(seconds=1.5)  # the sweep's period, 0.5 s, and slack
        assert await audit_actions(db, hold.id) == ["HELD", "EXPIRED"]
        assert await outbox_types(db, hold.id) == ["HELD", "EXPIRED"]
    await expect_error(customer.confirm(held[0].id), grpc.StatusCode.FAILED_PRECONDITION, "HOLD_EXPIRED")


async def test_a_confirm_racing_the_expiry_and_a_create_has_one_outcome(
    caller: Callers, db: asyncpg.Connection
) -> None:
    """Twenty holds of one second; at their expiry, a confirm and a create for each slot at once. Never both
    succeed; whichever did is what the database holds, and the other failed for the reason it says."""
    admin, provider_id = caller("admin", uid("ops")), uid("prov")
    slots = [fresh_slot() for _ in range(20)]
    customers = [caller("user", uid("u")) for _ in slots]  # a customer each: at most 5 holds per customer
    holds = await asyncio.gather(
        *(
            customer.hold(provider_id=provider_id, start=a, end=b, ttl=timedelta(seconds=1))
            for customer, (a, b) in zip(customers, slots, strict=True)
        )
    )
    await until_database_time(db, min(h.expire_time.ToDatetime(UTC) for h in holds) - timedelta(milliseconds=20))

    async def outcome(call: object) -> str:
        try:
            await call  # type: ignore[misc]
        except grpc.aio.AioRpcError as error:
            reason: str = error_infos(error)[0].reason
            return reason
        return "ok"

    results = await asyncio.gather(
        *(
            asyncio.gather(
                outcome(customer.confirm(hold.id)),
                outcome(admin.create(provider_id=provider_id, customer_id="c", start=a, end=b)),
            )
            for customer, hold, (a, b) in zip(customers, holds, slots, strict=True)
        )
    )
    for hold, (confirm, create) in zip(holds, results, strict=True):
        assert not (confirm == "ok" and create == "ok"), hold.id
        assert confirm in ("ok", "HOLD_EXPIRED") and create in ("ok", "SLOT_UNAVAILABLE"), (confirm, create)
        row: Any = await db.fetchrow("SELECT state, delete_time FROM bookings WHERE id = $1", uuid.UUID(hold.id))
        if confirm == "ok":
            assert (row["state"], row["delete_time"]) == ("CONFIRMED", None)
        else:
            assert row["delete_time"] is not None or create != "ok"
    print(f"\nconfirm/create outcomes at expiry: {sorted(map(tuple, results))}")


async def test_confirm_twice_with_and_without_a_request_id(caller: Callers, db: asyncpg.Connection) -> None:
    customer, provider_id = caller("user", uid("u")), uid("prov")
    held = [await customer.hold(provider_id=provider_id, start=a, end=b) for a, b in (fresh_slot(), fresh_slot())]
    first = await customer.confirm(held[0].id, request_id="checkout-1", notes="n")
    again = await customer.confirm(held[0].id, request_id="checkout-1", notes="n")
    assert again == first and first.state == CONFIRMED
    assert await audit_actions(db, held[0].id) == ["HELD", "CONFIRMED"]
    # The same request_id for another hold, or other notes, is a different request.
    for other in (customer.confirm(held[1].id, request_id="checkout-1", notes="n"),
                  customer.confirm(held[0].id, request_id="checkout-1", notes="other")):  # fmt: skip
        await expect_error(other, grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_ID_REUSED")
    # Concurrent repeats: one confirm, every call answers with it.
    both = await asyncio.gather(*(customer.confirm(held[1].id, request_id="checkout-2") for _ in range(5)))
    assert len({b.etag for b in both}) == 1 and both[0].state == CONFIRMED
    assert await audit_actions(db, held[1].id) == ["HELD", "CONFIRMED"]
    # Without a request_id the second confirm is refused: the booking is no longer a hold.
    third = await customer.hold(provider_id=provider_id, start=(slot := fresh_slot())[0], end=slot[1])
    await customer.confirm(third.id)
    await expect_error(customer.confirm(third.id), grpc.StatusCode.FAILED_PRECONDITION, "NOT_HELD")
    await expect_error(customer.confirm(third.id, etag='"1"', request_id="late"), grpc.StatusCode.FAILED_PRECONDITION,
                       "NOT_HELD")  # fmt: skip
    stale = await customer.hold(provider_id=provider_id, start=(slot := fresh_slot())[0], end=slot[1])
    await expect_error(customer.confirm(stale.id, etag='"7"'), grpc.StatusCode.ABORTED, "ETAG_MISMATCH")


async def test_holds_are_bounded_per_customer_and_per_provider_under_concurrency(
    system: EventSystem, channels: list[grpc.aio.Channel]
) -> None:
    booking = system.booking(HOLDS_MAX_PER_CUSTOMER="2", HOLDS_MAX_PER_PROVIDER="3")
    admin = await admin_on(booking, channels)
    customer, provider_id = Caller(admin.stub, "user", uid("u")), uid("prov")

    async def try_hold(who: Caller, provider: str) -> grpc.aio.AioRpcError | booking_pb2.Booking:
        try:
            return await who.hold(provider_id=provider, start=(slot := fresh_slot())[0], end=slot[1])
        except grpc.aio.AioRpcError as error:
            return error

    tries = await asyncio.gather(*(try_hold(customer, uid("prov")) for _ in range(10)))
    made = [t for t in tries if isinstance(t, booking_pb2.Booking)]
    assert len(made) == 2
    refused = next(t for t in tries if isinstance(t, grpc.aio.AioRpcError))
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error_infos(refused)[0]
    assert (info.reason, info.metadata["bound"], info.metadata["per"]) == ("TOO_MANY_HOLDS", "2", "customer")
    # Deleting one frees its place; a confirmed one does not count either.
    await customer.delete(made[0].id)
    await customer.confirm(made[1].id)
    assert isinstance(await try_hold(customer, uid("prov")), booking_pb2.Booking)
    # Per provider: many customers, one provider.
    tries = await asyncio.gather(*(try_hold(Caller(admin.stub, "user", uid("u")), provider_id) for _ in range(10)))
    assert sum(isinstance(t, booking_pb2.Booking) for t in tries) == 3
    refused = next(t for t in tries if isinstance(t, grpc.aio.AioRpcError))
    assert error_infos(refused)[0].metadata["per"] == "provider"
    # Creating bookings is not bounded by holds.
    await admin.create(provider_id=provider_id, customer_id=customer.id)


async def test_who_may_hold_and_confirm(caller: Callers) -> None:
    customer, provider, admin = caller("user", uid("u")), caller("provider", uid("prov")), caller("admin", uid("ops"))
    start, end = fresh_slot()
    await expect_error(provider.hold(provider_id=provider.id, start=start, end=end),
                       grpc.StatusCode.PERMISSION_DENIED, "NOT_OWN_HOLD")  # fmt: skip
    await expect_error(customer.hold(provider_id=provider.id, customer_id="someone", start=start, end=end),
                       grpc.StatusCode.PERMISSION_DENIED, "NOT_OWN_BOOKING")  # fmt: skip
    held = await customer.hold(provider_id=provider.id, start=start, end=end)
    await expect_error(caller("user", uid("u")).confirm(held.id), grpc.StatusCode.NOT_FOUND, "BOOKING_NOT_FOUND")
    await expect_error(provider.confirm(held.id), grpc.StatusCode.PERMISSION_DENIED, "NOT_OWN_HOLD")
    for_someone = await admin.hold(provider_id=provider.id, customer_id=customer.id, start=end, end=end + (end - start))
    assert for_someone.customer_id == customer.id
    assert (await admin.confirm(held.id)).state == CONFIRMED
    assert (await customer.confirm(for_someone.id)).state == CONFIRMED
    # A request_id repeated by HoldSlot returns the hold; as CreateBooking's, it is not a booking's.
    slot = fresh_slot()
    first = await customer.hold(provider_id=provider.id, start=slot[0], end=slot[1], request_id="h-1")
    assert await customer.hold(provider_id=provider.id, start=slot[0], end=slot[1], request_id="h-1") == first
    await expect_error(customer.create(provider_id=provider.id, start=slot[0], end=slot[1], request_id="h-1"),
                       grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_ID_REUSED")  # fmt: skip
    confirmed = await customer.confirm(first.id)
    assert await customer.hold(provider_id=provider.id, start=slot[0], end=slot[1], request_id="h-1") == confirmed


@pytest.mark.parametrize(
    ("ttl", "words"),
    [
        (timedelta(milliseconds=500), "from 0:00:01"),
        (timedelta(minutes=15, microseconds=1), "to 0:15:00"),
        (timedelta(seconds=-5), "from 0:00:01"),
    ],
)
async def test_a_ttl_out_of_bounds_is_invalid_argument(caller: Callers, ttl: timedelta, words: str) -> None:
    start, end = fresh_slot()
    error = await expect_error(
        caller("user", uid("u")).hold(provider_id=uid("prov"), start=start, end=end, ttl=ttl),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert words in field_violations(error)["ttl"]


async def test_bad_confirm_input_is_invalid_argument(caller: Callers) -> None:
    customer = caller("user", uid("u"))
    error = await expect_error(customer.confirm("not-a-uuid", notes="n" * 2001, etag="x"),
                               grpc.StatusCode.INVALID_ARGUMENT)  # fmt: skip
    assert set(field_violations(error)) == {"booking_id", "notes", "etag"}
    await expect_error(customer.confirm(str(uuid.uuid4())), grpc.StatusCode.NOT_FOUND, "BOOKING_NOT_FOUND")


async def test_each_transition_reaches_subscribers_also_through_a_redis_outage(
    system: EventSystem, channels: list[grpc.aio.Channel]
) -> None:
    """HELD, CONFIRMED, and a second hold's HELD and EXPIRED (retired by the sweep) reach a subscriber of the
    provider, in order, while Redis is down (notify follows the outbox)."""
    booking, notify = system.booking(), system.notify()
    admin = await admin_on(booking, channels)
    customer, provider_id = Caller(admin.stub, "user", uid("u")), uid("prov")
    watcher = Subscription("provider", provider_id)
    await watcher.open(notify.address, filters={"provider_id": provider_id})
    try:
        system.redis.stop()
        held = await customer.hold(provider_id=provider_id, start=(slot := fresh_slot())[0], end=slot[1])
        confirmed = await customer.confirm(held.id)
        lapsing = await customer.hold(
            provider_id=provider_id, start=(slot := fresh_slot())[0], end=slot[1], ttl=timedelta(seconds=1)
        )
        await eventually(lambda: len(watcher.events) >= 4, lambda: f"events: {watcher.events}", within=30)
        seen = [(e.type, e.booking.id, e.booking.state) for e in watcher.events]
        assert seen == [
            (events_pb2.BOOKING_EVENT_TYPE_HELD, held.id, HELD),
            (events_pb2.BOOKING_EVENT_TYPE_CONFIRMED, held.id, CONFIRMED),
            (events_pb2.BOOKING_EVENT_TYPE_HELD, lapsing.id, HELD),
            (events_pb2.BOOKING_EVENT_TYPE_EXPIRED, lapsing.id, HELD),
        ]
        assert watcher.events[1].booking == confirmed
        expired = watcher.events[3]
        assert expired.booking.HasField("delete_time") and expired.booking.deletion_reason == "hold expired"
        assert expired.actor.id == "system:hold-expiry" and expired.booking.HasField("expire_time")
    finally:
        await watcher.close()


async def test_a_customers_concurrent_holds_are_counted_exactly_the_second_waits_for_the_first(
    booking_server: ServiceProcess, booking_db_url: str
) -> None:
    """HoldSlot's statement itself, on two connections: the first holds for a customer inside a transaction it
    keeps open; the second, for another provider (so no provider lock is shared), waits on the customer's lock
    and, once the first commits, counts its hold and is refused at a bound of 1. Counting with the statement's
    own snapshot, or without the lock, would let both in."""
    assert booking_server.address  # it has migrated the database
    customer = uid("u")
    first, second = await asyncpg.connect(booking_db_url), await asyncpg.connect(booking_db_url)

    def hold_args(provider: str) -> tuple[Any, ...]:
        start, end = fresh_slot()
        zero = timedelta(0)
        return (uuid.uuid4(), customer, provider, "cut", start, end, "", customer, None, uuid.uuid4(), customer,
                "user", None, "", zero, zero, timedelta(minutes=5), 1, 1000)  # fmt: skip

    try:
        transaction = first.transaction()
        await transaction.start()
        made = await first.fetchrow(HOLD_SQL, *hold_args(uid("prov")))
        assert made is not None and made["id"] is not None
        racing = asyncio.create_task(second.fetchrow(HOLD_SQL, *hold_args(uid("prov"))))

        async def waiting() -> bool:  # on the customer's lock, which the first holds
            found = await first.fetchval(
                "SELECT wait_event FROM pg_stat_activity WHERE pid = $1", second.get_server_pid()
            )
            return bool(found == "advisory")

        await eventually(waiting, lambda: "the second hold waiting on the customer's lock", within=10)
        assert not racing.done()
        await transaction.commit()
        refused = await asyncio.wait_for(racing, 10)
        assert refused is not None and refused["id"] is None and list(refused["holds"]) == [1, 0]
    finally:
        await first.close()
        await second.close()


async def test_a_hold_obeys_the_providers_hours_and_buffers_and_a_deleted_one_is_restored_held(
    caller: Callers,
) -> None:
    provider, admin, customer = caller("provider", uid("prov")), caller("admin", uid("ops")), caller("user", uid("u"))
    await put(provider, schedule(provider.id, buffer_after=timedelta(minutes=30)))
    monday = next_weekday(1)
    await expect_error(customer.hold(provider_id=provider.id, start=berlin(monday, 8), end=berlin(monday, 9)),
                       grpc.StatusCode.FAILED_PRECONDITION, "OUTSIDE_AVAILABILITY")  # fmt: skip
    held = await customer.hold(provider_id=provider.id, start=berlin(monday, 10), end=berlin(monday, 11))

    # Its buffer after is the provider's: the half hour after it is taken as well.
    def book(start: float, end: float) -> Awaitable[booking_pb2.Booking]:
        return admin.create(
            provider_id=provider.id, customer_id="c", start=berlin(monday, start), end=berlin(monday, end)
        )

    await expect_error(book(11, 11.5), grpc.StatusCode.ALREADY_EXISTS, "SLOT_UNAVAILABLE")
    deleted = await customer.delete(held.id, reason="changed my mind")
    assert deleted.state == HELD and deleted.HasField("delete_time")
    restored = await admin.restore(held.id)  # still within its time: a hold again, until the same expire_time
    assert restored.state == HELD and restored.expire_time == held.expire_time
    await expect_error(book(10, 11), grpc.StatusCode.ALREADY_EXISTS, "SLOT_UNAVAILABLE")
    assert (await customer.confirm(held.id)).state == CONFIRMED
