"""A hard delete (HardDeleteBooking or a purge) erases the booking's notes from the event log: by the time its
HARD_DELETED event reaches a subscriber, no Subscribe from any cursor, on any instance, from memory, from Redis or
from the outbox, yields an event carrying them; no outbox or dead-letter row and no Redis key holds them; and
resuming across the erased events gives no gap, no duplicate and no OUT_OF_RANGE (they arrive with notes empty).
Other bookings keep their notes."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
import pytest
import redis.asyncio as redis

from booking_api.booking.v1 import booking_pb2
from booking_service.publisher import RedisPublisher
from svc_common import eventstream
from svc_common.eventstream import EventId
from tests.support.events import HARD_DELETED, EventSystem, Subscription, admin_on, assert_exactly, eventually
from tests.support.helpers import Caller, ts, uid
from tests.support.servers import ServiceProcess


async def redis_holds(url: str, secret: bytes) -> list[str]:
    """The keys of every Redis database whose content holds `secret`, whatever their type."""
    found = []
    client = redis.Redis.from_url(url)
    try:
        async for key in client.scan_iter():
            kind = await client.type(key)
            content: Any
            if kind == b"stream":
                content = await client.xrange(key)
            elif kind == b"zset":
                content = await client.zrange(key, 0, -1)
            else:
                content = await client.dump(key)
            if secret in repr(content).encode():
                found.append(repr(key))
    finally:
        await client.aclose()
    return found


async def postgres_holds(database_url: str, secret: str) -> dict[str, int]:
    """How many rows of each table that keeps events or history hold `secret`."""
    conn = await asyncpg.connect(database_url)
    try:
        tables = ("booking_outbox", "booking_outbox_dead", "booking_audit", "bookings")
        counts = {
            t: await conn.fetchval(f"SELECT count(*) FROM {t} t WHERE t::text LIKE $1", f"%{secret}%") for t in tables
        }
    finally:
        await conn.close()
    return {table: count for table, count in counts.items() if count}


async def replay(notifier: ServiceProcess, cursor: str, until: str) -> Subscription:
    """A subscription resumed from `cursor` on `notifier` that has received everything up to `until`."""
    resumed = Subscription("admin", uid("resumed"))
    await resumed.open(notifier.address, filters={"resume_after": cursor})
    try:
        await resumed.wait_for(until)
    finally:
        await resumed.close()
    return resumed


def carried(subscription: Subscription, secret: str) -> list[str]:
    """The ids of the events `subscription` received that carry `secret` anywhere."""
    return [e.event_id for e in subscription.events if secret.encode() in e.SerializeToString()]


def notes_of(subscription: Subscription, booking_id: str) -> set[str]:
    return {e.booking.notes for e in subscription.events if e.booking.id == booking_id}


async def plant_dead_letter(database_url: str, booking: booking_pb2.Booking) -> None:
    """A dead-letter row for `booking`, as the relay sets one aside (with its notes)."""
    conn = await asyncpg.connect(database_url)
    try:
        data = {"id": booking.id, "notes": booking.notes, "customer_id": booking.customer_id}
        await conn.execute(
            "INSERT INTO booking_outbox_dead (seq, stream_ms, outbox_id, event_type, booking, actor_id, actor_name,"
            " actor_role, occur_time, error) VALUES (1000000, 0, 0, 'CREATED', $1::jsonb, 'a', 'a', 'admin', now(),"
            " 'planted by the test')",
            json.dumps(data),
        )
    finally:
        await conn.close()


async def purge_all(admin: Caller) -> int:
    response = await admin.call(
        "PurgeDeletedBookings",
        booking_pb2.PurgeDeletedBookingsRequest(
            deleted_before=ts(datetime.now(UTC) + timedelta(minutes=1)), force=True
        ),
    )
    return int(response.purge_count)


@pytest.mark.timeout(180)
async def test_hard_delete_and_purge_erase_the_notes_from_memory_redis_postgres_and_every_cursor(
    system: EventSystem, channels: list[grpc.aio.Channel]
) -> None:
    booking = system.booking()
    windowed = system.notify()  # resumes served from its memory of recent events
    unwindowed = system.notify(SUBSCRIBE_HISTORY_WINDOW="0")  # resumes served from Redis
    live = Subscription("admin", uid("live"))
    await live.open(windowed.address)
    admin = await admin_on(booking, channels)
    secret, purged_secret, kept = f"SECRET-{uid('n')}", f"PURGED-{uid('n')}", f"KEPT-{uid('n')}"

    victim = await admin.create(provider_id=uid("prov"), customer_id=uid("cust"), notes=secret)
    other = await admin.create(provider_id=uid("prov"), customer_id=uid("cust"), notes=kept)
    await admin.delete(victim.id, reason="asked to be forgotten")
    await admin.restore(victim.id)
    await admin.delete(victim.id, reason="asked to be forgotten")
    purged = await admin.create(provider_id=uid("prov"), customer_id=uid("cust"), notes=purged_secret)
    await admin.delete(purged.id, reason="old")
    before = await system.wait_relayed(7)
    await live.wait_for(before[-1][0])
    assert notes_of(live, victim.id) == {secret}  # before the hard delete, its events carry the notes
    # A resume now fills the notify instances' memory and shared reads with them.
    assert carried(await replay(unwindowed, "0-0", before[-1][0]), secret)
    await plant_dead_letter(system.database_url, victim)

    await admin.hard_delete(victim.id)
    assert await purge_all(admin) == 1
    committed = await system.wait_relayed(9)
    await live.wait_for(committed[-1][0])
    hard_deleted = [e for e in live.events if e.type == HARD_DELETED]
    assert {e.booking.id for e in hard_deleted} == {victim.id, purged.id}
    assert {e.booking.notes for e in hard_deleted} == {""}  # the HARD_DELETED event never carries them
    assert {e.booking.deletion_reason for e in hard_deleted} == {"asked to be forgotten", "old"}  # the rest stays

    victim_created = before[0][0]
    for notifier in (windowed, unwindowed):
        for cursor in ("0-0", victim_created, before[2][0]):
            resumed = await replay(notifier, cursor, committed[-1][0])
            expected = (
                committed[[event_id for event_id, _, _ in committed].index(cursor) + 1 :]
                if cursor != "0-0"
                else committed
            )
            assert_exactly(resumed, expected)  # no gap, no duplicate, no OUT_OF_RANGE across the erased events
            assert carried(resumed, secret) == [] and carried(resumed, purged_secret) == []
            if any(booking_id == other.id for _, _, booking_id in expected):
                assert notes_of(resumed, other.id) == {kept}
            if cursor == "0-0":
                assert notes_of(resumed, victim.id) == {""}  # erased events arrive, with notes empty

    assert await postgres_holds(system.database_url, secret) == {}
    assert await postgres_holds(system.database_url, purged_secret) == {}
    assert await postgres_holds(system.database_url, kept) == {"booking_outbox": 1, "booking_audit": 1, "bookings": 1}
    assert await redis_holds(system.redis.url, secret.encode()) == []
    assert await redis_holds(system.redis.url, purged_secret.encode()) == []
    assert await redis_holds(system.redis.url, kept.encode()) != []  # the check can see notes where they are
    await live.close()


@pytest.mark.timeout(180)
async def test_a_hard_delete_while_redis_is_down_erases_on_the_outbox_path_and_in_redis_once_it_is_back(
    system: EventSystem, channels: list[grpc.aio.Channel]
) -> None:
    booking = system.booking()
    notifier = system.notify(SUBSCRIBE_HISTORY_WINDOW="0")
    live = Subscription("admin", uid("live"))
    await live.open(notifier.address)
    admin = await admin_on(booking, channels)
    secret = f"SECRET-{uid('n')}"
    victim = await admin.create(provider_id=uid("prov"), customer_id=uid("cust"), notes=secret)
    await admin.delete(victim.id)
    before = await system.wait_relayed(2)
    await live.wait_for(before[-1][0])  # published to Redis, notes and all

    system.redis.stop()
    marker = await admin.create(provider_id=uid("prov"), customer_id=uid("cust"))
    await eventually(lambda: any(e.booking.id == marker.id for e in live.events), lambda: "no event from the outbox")
    assert "following the outbox in PostgreSQL" in notifier.log()
    await admin.hard_delete(victim.id)
    committed = await system.wait_relayed(4)
    await live.wait_for(committed[-1][0])
    # Read from the outbox (Redis is down), from a cursor the notify instance followed the outbox from.
    from_outbox = await replay(notifier, committed[1][0], committed[-1][0])
    assert_exactly(from_outbox, committed[2:])
    assert carried(from_outbox, secret) == []

    system.redis.start()
    await eventually(lambda: "back to Redis" in notifier.log(), lambda: "notify did not go back to Redis")
    from_redis = await replay(notifier, "0-0", committed[-1][0])
    assert_exactly(from_redis, committed)
    assert carried(from_redis, secret) == []
    assert notes_of(from_redis, victim.id) == {""}
    assert await redis_holds(system.redis.url, secret.encode()) == []
    await live.close()


async def ids(client: redis.Redis, key: str) -> list[bytes]:
    entries: Any = await client.xrange(key)
    return [entry_id for entry_id, _ in entries]


async def test_trimming_the_stream_by_age_trims_the_erased_copies_before_its_oldest_entry(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    key = f"test-erasure:{uid('trim')}"
    publisher = RedisPublisher(client, key, max_len=1000)
    try:

        def entry(ms: int, seq: int) -> tuple[EventId, dict[bytes, bytes]]:
            return EventId(ms, seq), {eventstream.FIELD_EVENT: f"event {seq}".encode()}

        old, new = [entry(1000, seq) for seq in (1, 2, 3)], [entry(5000, seq) for seq in (4, 5, 6)]
        await publisher.publish([*old, *new[:2]])
        # Erasing 2 (old) and 4 (new) while publishing 6: both leave the stream for the erased set.
        await publisher.publish([new[2]], erased=[old[1], new[0]])
        assert await ids(client, key) == [b"1000-1", b"1000-3", b"5000-5", b"5000-6"]
        assert len(await client.zrange(eventstream.erased_key(key), 0, -1)) == 2

        await publisher.trim_older_than(2000)
        assert await ids(client, key) == [b"5000-5", b"5000-6"]
        kept: Any = await client.zrange(eventstream.erased_key(key), 0, -1)
        assert [eventstream.unpack_entry(member)[0] for member in kept] == [b"5000-4"]  # placed after the cutoff
    finally:
        await client.delete(key, eventstream.erased_key(key))
        await client.aclose()
