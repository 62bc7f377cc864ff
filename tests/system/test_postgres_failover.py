"""PostgreSQL failing over to its standby under a steady writer, with two booking and two notify instances given
both hosts (`postgresql://...h1,h2/db?target_session_attrs=read-write`) and two subscribers on each notify
instance:

(a) the primary killed, the standby promoted;
(b) the primary frozen (SIGSTOP: a hung host, its connections open and silent), the standby promoted;
(c) an asynchronous standby that missed the last acknowledged transactions (the primary's WAL sender frozen
    while writes go on), promoted after the primary is killed: with Redis healthy, and with Redis paused across
    the failover (notify follows the outbox meanwhile);
(d) as (c), with the new primary's clock 30 s behind the old one's.

Each checks that every change the new primary holds reached every subscriber exactly once, in stream order; that
every create acknowledged after the promotion is among them; that no call failed otherwise than UNAVAILABLE or
ABORTED (never INTERNAL); that a replay from `0-0` afterwards has every change once; and in (c) and (d), that the
lost tail (what the subscribers got that the new primary lacks) comes right before the seam, in one piece. Each
prints how long after the promotion writes succeeded again and every subscriber had the first of them.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import grpc
import pytest
import redis.asyncio as redis

from svc_common.eventstream import EventId
from svc_common.outbox import change_key, change_of
from svc_common.postgres import Connector, NoHostAvailable
from tests.support.events import EventSystem, Subscription, eventually
from tests.support.pg_pair import LIBFAKETIME, PostgresPair
from tests.support.realtime import steady_changes
from tests.support.writer import Writer

pytestmark = pytest.mark.timeout(240)

WRITES_AFTER = 100  # acknowledged creates after the promotion before the writer stops
LOST_AT_LEAST = 20  # acknowledged creates the standby must miss in (c) and (d)


@pytest.fixture
async def pair(workdir: Path) -> AsyncIterator[PostgresPair]:
    made = PostgresPair(workdir / f"pg-pair-{time.monotonic_ns()}")
    await asyncio.to_thread(made.start)
    yield made
    await asyncio.to_thread(made.stop)


@pytest.fixture
async def system(pair: PostgresPair, workdir: Path) -> AsyncIterator[EventSystem]:
    made = EventSystem(workdir, pair.url(await pair.create_database()))
    made.redis.start()
    yield made
    made.stop()


async def _pause_redis(system: EventSystem, seconds: float) -> None:
    client = redis.Redis.from_url(system.redis.url)
    try:
        await client.client_pause(int(seconds * 1000))
    finally:
        await client.aclose()


async def _failover(
    pair: PostgresPair,
    system: EventSystem,
    watchers: list[Subscription],
    channels: list[grpc.aio.Channel],
    fault: str,
    before_promotion: Callable[[Writer], Awaitable[None]],
) -> None:
    notifiers, writer = await steady_changes(system, watchers, channels, DATABASE_CONNECT_TIMEOUT_SECONDS="1")
    await writer.until(100)
    await before_promotion(writer)
    acked_before = set(writer.returned)
    await asyncio.to_thread(pair.promote)
    promoted = time.monotonic()
    await eventually(
        lambda: sum(t >= promoted for t in writer.returned.values()) >= WRITES_AFTER,
        lambda: (
            f"only {sum(t >= promoted for t in writer.returned.values())} creates acknowledged since the "
            f"promotion ({len(writer.failures)} failed)"
        ),
        within=90,
    )
    await writer.stop()
    await asyncio.to_thread(pair.kill_primary)  # frozen or not: what the subscribers get comes from the new one

    conn = await asyncpg.connect(system.database_url, timeout=10)
    rows: list[asyncpg.Record] = []

    async def placed() -> bool:
        nonlocal rows
        rows = await conn.fetch(
            "SELECT stream_ms, seq, event_type, booking->>'id' AS booking, booking->>'version' AS version"
            " FROM booking_outbox ORDER BY seq"
        )
        return all(r["seq"] is not None for r in rows)

    try:
        await eventually(placed, lambda: "committed events still have no stream position", within=30)
    finally:
        await conn.close()
    # Changes, not positions: a change the new primary got the commit of but not the placing of is placed again
    # there; a subscriber that had it from the old primary must not get it twice (nor miss it).
    held = [change_key(r["event_type"], r["booking"], r["version"]) for r in rows if r["event_type"] != "SEAM"]
    seams = [EventId(r["stream_ms"], r["seq"]) for r in rows if r["event_type"] == "SEAM"]
    held_bookings = {r["booking"] for r in rows if r["event_type"] != "SEAM"}
    after = {booking for booking, t in writer.returned.items() if t >= promoted}
    assert after <= held_bookings, f"{len(after - held_bookings)} creates acknowledged after the promotion are lost"
    lost = (acked_before | set(writer.returned)) - held_bookings

    def changes(watcher: Subscription) -> list[str]:
        return [change_of(event) for event in watcher.events]

    for watcher in watchers:
        await eventually(
            lambda w=watcher: w.error is not None or set(held) <= set(changes(w)),  # type: ignore[misc]
            lambda w=watcher: (
                f"a subscriber has {len(set(held) & set(changes(w)))} of {len(held)} changes; last {w.last_id}"  # type: ignore[misc]
            ),
            within=60,
        )
        assert watcher.error is None, f"{watcher.error.code()}: {watcher.error.details()}"
        got = changes(watcher)
        assert len(got) == len(set(got)), "a subscriber got a change twice"
        assert [c for c in got if c in set(held)] == held, "not every change once, in stream order"
        extra = [n for n, change in enumerate(got) if change not in set(held)]
        if extra:  # the lost tail: delivered before the failover, one run, right before the seam
            # Changes the new primary does not have at all (acknowledged or not: a call can fail after its commit).
            assert not {watcher.events[n].booking.id for n in extra} & held_bookings
            assert extra[-1] - extra[0] + 1 == len(extra), "lost events are not one run"
            assert seams, "events the new primary lacks were delivered, but no seam was placed"
            following = EventId.parse(watcher.ids[extra[-1] + 1]) if extra[-1] + 1 < len(got) else None
            assert following is not None and following.seq > seams[0].seq, "the lost run is not right before the seam"
    internal = [f for f in writer.failures if f.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED)]
    assert not internal, [f"{f.code().name}: {f.details()}" for f in internal]

    # A replay of the whole stream after the failover: both sides of the seam, each change once.
    replay = Subscription("admin", "replay")
    await replay.open(notifiers[0].address, filters={"resume_after": "0-0"})
    try:
        await eventually(
            lambda: replay.error is not None or set(held) <= set(changes(replay)),
            lambda: f"the replay has {len(set(held) & set(changes(replay)))} of {len(held)} changes",
            within=60,
        )
        assert replay.error is None, f"{replay.error.code()}: {replay.error.details()}"
        assert len(changes(replay)) == len(set(changes(replay))), "the replay has a change twice"
    finally:
        await replay.close()
    first_after = min(t for t in writer.returned.values() if t >= promoted)
    # Changes the new primary placed again (it had their commits, not their placing): delivered once all the same.
    held_at = {change_key(r["event_type"], r["booking"], r["version"]): f"{r['stream_ms']}-{r['seq']}" for r in rows}
    placed_again = sum(held_at.get(change_of(e)) not in (None, e.event_id) for e in watchers[0].events)
    print(
        f"\nPostgreSQL failover, {fault}: writes again {first_after - promoted:.2f} s after the promotion, every "
        f"subscriber had the first of them {_first_everywhere(watchers, writer, promoted):.2f} s after it; "
        f"{len(writer.failures)} creates failed during the fault, {len(lost)} acknowledged creates lost with the "
        f"old primary, {placed_again} placed again, {len(seams)} seam(s); 0 lost or duplicated after the "
        f"promotion ({len(after)} creates)"
    )


def _first_everywhere(watchers: list[Subscription], writer: Writer, promoted: float) -> float:
    """Seconds from the promotion until every subscriber had the first create acknowledged after it."""
    first = min((t, booking) for booking, t in writer.returned.items() if t >= promoted)[1]
    return max(arrived for w in watchers for _, booking, arrived in w.received if booking == first) - promoted


async def test_a_killed_primary(
    pair: PostgresPair, system: EventSystem, watchers: list[Subscription], channels: list[grpc.aio.Channel]
) -> None:
    async def kill(_writer: Writer) -> None:
        await asyncio.to_thread(pair.kill_primary)

    await _failover(pair, system, watchers, channels, "(a) primary killed", kill)


async def test_a_frozen_primary(
    pair: PostgresPair, system: EventSystem, watchers: list[Subscription], channels: list[grpc.aio.Channel]
) -> None:
    async def freeze(_writer: Writer) -> None:
        pair.freeze_primary()

    await _failover(pair, system, watchers, channels, "(b) primary frozen", freeze)


async def _lose_the_tail(pair: PostgresPair, writer: Writer) -> None:
    """Acknowledged creates the standby never gets, then the primary dies."""
    await pair.freeze_replication()
    await writer.until(writer.changes + LOST_AT_LEAST)
    await asyncio.to_thread(pair.kill_primary)


@pytest.mark.parametrize("redis_paused", [False, True], ids=["redis-healthy", "redis-paused"])
async def test_an_asynchronous_standby_missing_the_acknowledged_tail(
    pair: PostgresPair,
    system: EventSystem,
    watchers: list[Subscription],
    channels: list[grpc.aio.Channel],
    redis_paused: bool,
) -> None:
    async def lose_tail(writer: Writer) -> None:
        if redis_paused:  # notify follows the outbox (after its fallback delay) through the failover
            await _pause_redis(system, 12)
            await asyncio.sleep(3)
        await _lose_the_tail(pair, writer)

    fault = "(c) standby missing the tail, Redis " + ("paused 12 s" if redis_paused else "healthy")
    await _failover(pair, system, watchers, channels, fault, lose_tail)


async def test_a_new_primary_whose_clock_is_behind(
    pair: PostgresPair, system: EventSystem, watchers: list[Subscription], channels: list[grpc.aio.Channel]
) -> None:
    if not LIBFAKETIME.exists() and os.environ.get("TESTS_REQUIRE_ALL") != "1":  # CI installs it: never skipped
        pytest.skip("libfaketime is not installed (Debian: apt-get install faketime)")

    async def lose_tail_and_clock(writer: Writer) -> None:
        await _lose_the_tail(pair, writer)
        pair.set_standby_clock("-30s")

    await _failover(
        pair, system, watchers, channels, "(d) as (c), the new primary's clock 30 s behind", lose_tail_and_clock
    )


async def test_without_target_session_attrs_a_standby_named_first_is_passed_over(pair: PostgresPair) -> None:
    """A URL that names the standby first and does not ask for read-write connects to it; what needs the primary
    (LISTEN, which a standby refuses) moves on to the next host, and connections after it go there first."""
    database = await pair.create_database()
    url = f"postgresql://postgres@127.0.0.1:{pair.standby.port},127.0.0.1:{pair.primary.port}/{database}"
    connector = Connector(url, connect_timeout=2)
    with pytest.raises(NoHostAvailable, match="a standby"):
        await connector.listening("anything", lambda *_: None)
    conn = await connector.listening("anything", lambda *_: None)
    try:
        assert not await conn.fetchval("SELECT pg_is_in_recovery()")
    finally:
        await conn.close()
    conn = await connector()
    try:
        assert not await conn.fetchval("SELECT pg_is_in_recovery()")
    finally:
        await conn.close()
