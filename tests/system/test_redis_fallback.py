"""Realtime keeps flowing while Redis is down: notify instances follow the outbox in PostgreSQL instead, with
the same event ids, and go back to the stream at the exact position when Redis is back.

Two booking and two notify instances, a steady stream of changes, subscribers on both notify instances; what
was committed is read back from the outbox, and every subscriber must have exactly that, in order.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import time

import asyncpg
import grpc
from grpc_health.v1 import health_pb2

from devtools.servers import free_port
from tests.support.events import EventSystem, Subscription, admin_on, eventually
from tests.support.helpers import scrape, uid
from tests.support.realtime import (
    everyone_got_exactly_what_was_committed,
    latencies_ms,
    steady_changes,
)
from tests.support.servers import ServiceProcess
from tests.support.writer import Writer

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
FALLBACK_AFTER = 2.0  # notify's default REDIS_FALLBACK_AFTER_SECONDS


async def outage(
    system: EventSystem,
    watchers: list[Subscription],
    channels: list[grpc.aio.Channel],
    *,
    seconds: float,
    lose_data: bool,
    resume_during: bool,
) -> tuple[list[ServiceProcess], Writer, float, float]:
    """Steady changes through two booking instances to subscribers on two notify instances while Redis is
    down for `seconds` (and comes back empty if `lose_data`); returns the notify instances, the writer, and
    when the outage began and ended."""
    notifiers, writer = await steady_changes(system, watchers, channels)
    await asyncio.sleep(3)
    began = time.monotonic()
    system.redis.stop()
    await asyncio.sleep(FALLBACK_AFTER + 1)
    for notifier in notifiers:  # subscribers are served from PostgreSQL now, and health says so
        await notifier.wait_health(SERVING, "events")
        await notifier.wait_health(NOT_SERVING, "redis")
    if resume_during:
        # A subscriber moves to the other instance during the outage, with its cursor.
        moving = watchers[0]
        await moving.close()
        await asyncio.sleep(0.5)  # it misses some changes meanwhile
        await moving.open(notifiers[1].address, resume=True)
    await asyncio.sleep(seconds - FALLBACK_AFTER - 1)
    if lose_data:  # it comes back empty
        shutil.rmtree(system.redis.base_dir / "appendonlydir", ignore_errors=True)
        (system.redis.base_dir / "dump.rdb").unlink(missing_ok=True)
    system.redis.start()
    ended = time.monotonic()
    for notifier in notifiers:  # back on the stream
        await notifier.wait_health(SERVING, "redis")
    await asyncio.sleep(3)
    return notifiers, writer, began, ended


async def test_redis_down_for_20_seconds_every_change_reaches_every_subscriber_from_postgresql(
    system: EventSystem, watchers: list[Subscription], channels: list[grpc.aio.Channel]
) -> None:
    notifiers, writer, began, ended = await outage(
        system, watchers, channels, seconds=20, lose_data=False, resume_during=True
    )
    await everyone_got_exactly_what_was_committed(system, watchers, writer)

    switched = began + FALLBACK_AFTER + 1  # by then the notify instances follow the outbox
    during = latencies_ms(watchers, writer, switched, ended)
    waiting = latencies_ms(watchers, writer, began, switched)
    p50, p99 = statistics.quantiles(during, n=100)[49], statistics.quantiles(during, n=100)[98]
    print(
        f"\nRedis down: {len(during)} deliveries after the switch, p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
        f"max {during[-1]:.1f} ms; before it, max {waiting[-1]:.0f} ms (REDIS_FALLBACK_AFTER_SECONDS "
        f"{FALLBACK_AFTER:g})"
    )
    assert p99 < 1000
    assert waiting[-1] < (FALLBACK_AFTER + 2) * 1000  # those committed before the switch waited for it
    for notifier in notifiers:
        assert "following the outbox in PostgreSQL" in notifier.log()
        await eventually(lambda n=notifier: "back to Redis" in n.log(), notifier.log_tail, within=10)  # type: ignore[misc]


async def test_redis_back_without_its_data_the_relay_republishes_and_nobody_misses_anything(
    system: EventSystem, watchers: list[Subscription], channels: list[grpc.aio.Channel]
) -> None:
    notifiers, writer, _, _ = await outage(system, watchers, channels, seconds=6, lose_data=True, resume_during=False)
    await everyone_got_exactly_what_was_committed(system, watchers, writer)
    for notifier in notifiers:
        await eventually(lambda n=notifier: "back to Redis" in n.log(), notifier.log_tail, within=10)  # type: ignore[misc]


async def test_metrics_summed_over_workers_say_which_path_events_come_by(system: EventSystem) -> None:
    system.booking()  # the outbox
    port = free_port()
    notifier = system.notify(WORKERS="2", METRICS_LISTEN=f"127.0.0.1:{port}")
    assert scrape(port).get("notify_events_from_postgres") == 0
    system.redis.stop()
    await eventually(lambda: scrape(port).get("notify_events_from_postgres") == 2, lambda: f"metrics: {scrape(port)}")
    assert scrape(port)["notify_event_source_switches_total{to=postgres}"] == 2
    await notifier.wait_health(NOT_SERVING, "redis")
    system.redis.start()
    await eventually(lambda: scrape(port).get("notify_events_from_postgres") == 0, lambda: f"metrics: {scrape(port)}")
    assert scrape(port)["notify_event_source_switches_total{to=redis}"] == 2


async def test_back_from_an_empty_redis_a_cursor_placed_during_the_outage_is_served_until_the_stream_has_it(
    system: EventSystem, channels: list[grpc.aio.Channel]
) -> None:
    """Notify goes back to the stream only once it holds the events up to the instance's position: until the
    relay has published them again into a Redis that came back empty, resumes are served from the outbox."""
    booking = system.booking()
    notifier = system.notify(SUBSCRIBE_HISTORY_WINDOW="5")  # remembers too little to serve the cursor itself
    live = Subscription("admin", uid("live"))
    await live.open(notifier.address)
    admin = await admin_on(booking, channels)
    for _ in range(3):
        await admin.create(provider_id=uid("prov"), customer_id=uid("cust"))
    system.redis.stop()
    for _ in range(10):  # placed during the outage
        await admin.create(provider_id=uid("prov"), customer_id=uid("cust"))
    committed = await system.wait_relayed(13)
    await live.wait_for(committed[-1][0])
    booking.stop()  # no relay: the stream stays empty when Redis comes back
    shutil.rmtree(system.redis.base_dir / "appendonlydir", ignore_errors=True)
    (system.redis.base_dir / "dump.rdb").unlink(missing_ok=True)
    system.redis.start()
    await asyncio.sleep(2)  # notify has probed the empty stream a few times

    resumed = Subscription("admin", uid("resumed"))
    await resumed.open(notifier.address, filters={"resume_after": committed[7][0]})
    try:
        await resumed.wait_for(committed[-1][0])
        assert resumed.ids == [event_id for event_id, _, _ in committed[8:]]
    finally:
        await resumed.close()
        await live.close()
    assert "back to Redis" not in notifier.log().rpartition("following the outbox")[2]
    booking.start()  # the relay publishes again from its durable mark, and notify goes back to the stream
    await eventually(lambda: "back to Redis" in notifier.log().rpartition("following the outbox")[2], lambda: "")


async def test_an_unreadable_outbox_row_read_while_following_postgres_holds_its_place(
    system: EventSystem, channels: list[grpc.aio.Channel]
) -> None:
    """Followed from the outbox, a row no valid write makes is passed over in its place, as the relay passes
    over it in the stream: the events after it arrive, with no OUT_OF_RANGE."""
    booking = system.booking()
    notifier = system.notify()
    live = Subscription("admin", uid("live"))
    await live.open(notifier.address)
    admin = await admin_on(booking, channels)
    await admin.create(provider_id=uid("prov"), customer_id=uid("cust"))
    await live.wait_for((await system.wait_relayed(1))[0][0])  # the instance has a position in the stream
    system.redis.stop()
    await notifier.wait_health(NOT_SERVING, "redis")  # following the outbox
    conn = await asyncpg.connect(system.database_url)
    try:
        await conn.execute(
            "INSERT INTO booking_outbox (event_type, booking, actor_id, actor_name, actor_role)"
            """ VALUES ('CREATED', '{"id": "x", "start_time": "infinity"}', 'evil', 'evil', 'user')"""
        )
    finally:
        await conn.close()
    after = await admin.create(provider_id=uid("prov"), customer_id=uid("cust"))
    committed = await system.wait_relayed(3)
    await live.wait_for(committed[-1][0])
    assert [e.booking.id for e in live.events][-1] == after.id
    assert live.ids == [committed[0][0], committed[2][0]]  # the unreadable one passed over in its place
    system.redis.start()
