"""Batches and catch-up: a burst goes out in few responses, a subscriber far behind catches up in large reads,
and a crowd resuming at once converges on a bounded number of Redis reads while live delivery goes on.

The events are written straight into the stream (as the relay would), so the test controls every position; the
notify server runs in this process on a real port against a private Redis, so the test can count its reads.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as redis

from booking_api.booking.v1 import booking_pb2, events_pb2
from booking_api.notify.v1 import notify_pb2
from devtools.servers import RedisServer
from notify_service.hub import EventFilter, Hub, Subscriber
from notify_service.server import running
from notify_service.servicer import POSITION_HEADER
from notify_service.settings import Settings
from svc_common import eventstream
from svc_common.eventstream import EventId
from svc_common.scope import Scope
from svc_common.supervisor import cancel_and_wait
from tests.support.events import Subscription, eventually
from tests.support.helpers import JWT_SECRET, assert_status, uid
from tests.support.notify_path import event_path

KEY = "catch-up:events"
CUSTOMERS = [f"customer-{n}" for n in range(10)]


def event_id(seq: int) -> str:
    return f"{1_000_000 + seq}-{seq}"


def entry(seq: int) -> dict[Any, Any]:
    customer = CUSTOMERS[seq % len(CUSTOMERS)]
    booking = booking_pb2.Booking(id=str(uuid.uuid4()), customer_id=customer, provider_id="provider", notes="x" * 200)
    event = events_pb2.BookingEvent(event_id=event_id(seq), type=events_pb2.BOOKING_EVENT_TYPE_CREATED, booking=booking)
    return {
        eventstream.FIELD_EVENT: event.SerializeToString(),
        eventstream.FIELD_CUSTOMER: customer.encode(),
        eventstream.FIELD_PROVIDER: b"provider",
        eventstream.FIELD_BOOKING: booking.id.encode(),
    }


class Stream:
    """The test's event stream: it appends events 1, 2, ... and counts what Redis was asked for."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.top = 0

    async def append(self, count: int) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            for _ in range(count):
                self.top += 1
                pipe.xadd(KEY, entry(self.top), id=event_id(self.top))
            await pipe.execute()

    async def range_reads(self) -> int:
        stats: Any = await self.client.info("commandstats")
        return int(stats.get("cmdstat_xrange", {}).get("calls", 0))


@pytest.fixture(scope="module")
def redis_server(workdir: Path) -> Iterator[RedisServer]:
    server = RedisServer(workdir / "redis-catch-up")
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def stream(redis_server: RedisServer) -> AsyncIterator[Stream]:
    client = redis.Redis.from_url(redis_server.url)
    await client.flushall()
    yield Stream(client)
    await client.aclose()


def settings(redis_server: RedisServer, **env: str) -> Settings:
    environ = {"REDIS_URL": redis_server.url, "JWT_SECRET": JWT_SECRET, "EVENT_STREAM_KEY": KEY, **env}
    return Settings.from_env(environ, listen="127.0.0.1:0")


async def started(address: str, role: str, sub: str, resume_after: str = "", **how: Any) -> Subscription:
    """A subscription the server has accepted, read by the test itself (`read_until`), so each response it
    counts is one the server wrote."""
    subscription = Subscription(role, sub)
    await subscription.open(address, read=False, filters={"resume_after": resume_after}, **how)
    return subscription


def ids(first: int, last: int, customer: str | None = None) -> list[str]:
    """The ids of events first..last (inclusive) that `customer` (None: an admin) may see."""
    return [event_id(s) for s in range(first, last + 1) if customer in (None, CUSTOMERS[s % len(CUSTOMERS)])]


async def test_a_burst_goes_out_in_few_responses_in_order_with_nothing_missing_or_repeated(
    redis_server: RedisServer, stream: Stream
) -> None:
    await stream.append(1)
    # A queue bound above the burst: this is about batching, not the slow-consumer rule (a busy machine may
    # read the burst from Redis faster than it writes it out).
    async with running(
        settings(redis_server, SUBSCRIBE_MAX_BATCH_EVENTS="100", SUBSCRIBER_QUEUE_SIZE="5000")
    ) as notify:
        address = f"127.0.0.1:{notify.port}"
        admin = await started(address, "admin", "ops")
        user = await started(address, "user", CUSTOMERS[3])
        try:
            await stream.append(2000)
            async with asyncio.timeout(30):
                await admin.read_until(event_id(2001))
                await user.read_until(ids(2, 2001, CUSTOMERS[3])[-1])
        finally:
            await admin.close()
            await user.close()
    assert admin.ids == ids(2, 2001)
    assert user.ids == ids(2, 2001, CUSTOMERS[3])
    # One write per event would be 2,000 responses; batches of up to 100 take about 20.
    assert admin.responses <= 60, admin.responses
    assert user.responses <= 20, user.responses


async def test_a_subscriber_ten_thousand_events_behind_catches_up_in_large_reads_then_goes_on_live(
    redis_server: RedisServer, stream: Stream
) -> None:
    await stream.append(10_000)
    # A window smaller than the backlog: most of the history comes from Redis.
    async with running(settings(redis_server, SUBSCRIBE_HISTORY_WINDOW="2000")) as notify:
        reads_before = await stream.range_reads()
        behind = await started(f"127.0.0.1:{notify.port}", "admin", "ops", resume_after=str(eventstream.ORIGIN))
        try:
            live = asyncio.create_task(stream.append(500))  # the seam between history and live moves meanwhile
            async with asyncio.timeout(60):
                await live
                await behind.read_until(event_id(10_500))
            reads = await stream.range_reads() - reads_before
        finally:
            await behind.close()
    print(f"\n10,500 events caught up in {behind.responses} responses and {reads} Redis range reads")
    assert behind.ids == ids(1, 10_500)
    assert behind.responses <= 10_500 / 50, behind.responses
    # 8,000 events older than the window, read 1,000 at a time (one read more finds where the window starts).
    assert reads <= 10, reads


async def test_a_thousand_subscribers_resuming_at_once_converge_on_few_redis_reads_while_live_goes_on(
    redis_server: RedisServer, stream: Stream
) -> None:
    """As after an instance died: 1,000 subscribers resume on one that has just started, users and admins,
    900 of them from recent cursors and 100 from older ones, while events keep coming and a live subscriber
    keeps receiving them."""
    await stream.append(3000)
    async with running(settings(redis_server, SUBSCRIBE_HISTORY_WINDOW="2000")) as notify:
        address = f"127.0.0.1:{notify.port}"
        channels = [grpc.aio.insecure_channel(address) for _ in range(10)]
        try:
            watcher = await started(address, "admin", "watcher", channel=channels[0])
            reads_before = await stream.range_reads()
            crowd: list[tuple[Subscription, int, str | None]] = []
            for n in range(1000):
                # Recent cursors spread over the last 500 events; old ones on 10 distinct positions before the
                # window (subscribers that had fallen behind).
                cursor = 2500 + n % 500 if n < 900 else 100 + 50 * (n % 10)
                customer = CUSTOMERS[n % len(CUSTOMERS)] if n % 3 else None
                role, sub = ("user", customer) if customer else ("admin", f"admin-{n}")
                reader = await started(address, role, sub, event_id(cursor), channel=channels[n % 10], wait=False)
                crowd.append((reader, cursor, customer))
            writing = asyncio.create_task(paced_append(stream, 200, per_second=100))
            async with asyncio.timeout(120):
                await writing
                last = stream.top
                await watcher.read_until(event_id(last))
                await asyncio.gather(*(reader.read_until(ids(1, last, customer)[-1]) for reader, _, customer in crowd))
            reads = await stream.range_reads() - reads_before
        finally:
            for channel in channels:
                await channel.close()
    print(f"\n1,000 subscribers resumed on {reads} Redis range reads")
    assert watcher.ids == ids(3001, last)
    for reader, cursor, customer in crowd:
        assert reader.ids == ids(cursor + 1, last, customer), (cursor, customer)
    # Without sharing, each of the 100 old cursors reads its own ranges (200+ reads); without the window, each of
    # the 1,000 reads at least once. With both: 10 first reads, then ranges the 100 share up to the window.
    assert reads <= 40, reads


async def paced_append(stream: Stream, count: int, *, per_second: float) -> None:
    for _ in range(count):
        await stream.append(1)
        await asyncio.sleep(1 / per_second)


async def test_a_resume_from_the_newest_cursor_gets_what_came_after_it_though_nothing_had_before(
    redis_server: RedisServer, stream: Stream
) -> None:
    """A history read that found fewer events than it asked for must not be kept for others: the stream grows at
    its end, and a later reader of the same range would miss what came since."""
    await stream.append(5)
    async with running(settings(redis_server, SUBSCRIBE_HISTORY_WINDOW="0")) as notify:
        address = f"127.0.0.1:{notify.port}"
        first = await started(address, "admin", "first", event_id(5))  # nothing follows it yet
        second = Subscription("admin", "second")
        try:
            await eventually(lambda: notify.hub.subscriber_count == 1, lambda: "the first did not join")  # read
            await stream.append(2)
            async with asyncio.timeout(15):
                await first.read_until(event_id(7))
                await second.open(address, read=False, filters={"resume_after": event_id(5)})
                await second.read_until(event_id(7))
            assert first.ids == second.ids == ids(6, 7)
        finally:
            await first.close()
            await second.close()


async def test_a_live_subscriber_accepted_before_the_first_stream_read_gets_every_event_after_its_position(
    workdir: Path,
) -> None:
    """A subscriber that arrives while the instance cannot read the stream yet is accepted only once the instance
    knows where it follows the stream from, and is told that position: nothing after it is missed (an instance
    that accepted it earlier started from wherever its first read landed, past events appended meanwhile)."""
    late_redis = RedisServer(workdir / uid("redis-late"), persist=True)
    client = redis.Redis.from_url(late_redis.url)
    stream = Stream(client)
    await asyncio.to_thread(late_redis.start)
    await stream.append(3)  # a stream with history, as in the flake: from an empty one, any next event is taken
    await asyncio.to_thread(late_redis.stop)  # so the instance starts without reading it
    subscription = Subscription("admin", "early")
    async with running(settings(late_redis)) as notify:
        try:
            call = await subscription.open(f"127.0.0.1:{notify.port}", read=False, wait=False)
            await asyncio.to_thread(late_redis.start)
            await stream.append(3)  # before, during or after the instance's first read
            async with asyncio.timeout(30):
                metadata = dict(await call.initial_metadata())
                assert POSITION_HEADER in metadata, f"accepted without a position: {metadata}"
                start = int(str(metadata[POSITION_HEADER]).split("-")[1])
                await stream.append(3)
                await subscription.read_until(event_id(stream.top))
            assert subscription.ids == ids(start + 1, stream.top)
        finally:
            await subscription.close()
            await client.aclose()
            late_redis.stop()


async def test_a_subscriber_is_unavailable_not_ready_while_the_instance_never_reads_the_stream(
    workdir: Path,
) -> None:
    absent = RedisServer(workdir / uid("redis-absent"))  # never started
    subscription = Subscription("admin", "early")
    async with running(settings(absent, SUBSCRIBE_START_WAIT_SECONDS="0.5")) as notify:
        try:
            await subscription.open(f"127.0.0.1:{notify.port}")
            error = await subscription.wait_error(within=30)
        finally:
            await subscription.close()
    assert_status(error, grpc.StatusCode.UNAVAILABLE, "NOT_READY", "notify.v1")


async def test_a_stream_reader_restarted_after_a_failure_goes_on_from_what_it_had_dispatched(
    redis_server: RedisServer, stream: Stream
) -> None:
    """Its supervisor restarts a reader that failed; the restarted one must not start again at the stream's end,
    past what was appended while it was down (every subscriber would then end with CURSOR_EXPIRED)."""
    await stream.append(5)
    hub = Hub()
    reader = event_path(stream.client, KEY, hub, block_ms=100).reader
    subscriber = Subscriber(EventFilter(Scope(None, None)), None, max_queue=100)
    reading = asyncio.create_task(reader.run())
    try:
        async with asyncio.timeout(15):
            await hub.positioned.wait()
            subscriber.last = hub.last
            hub.add(subscriber)
            await stream.append(2)
            await eventually(lambda: hub.last == EventId.parse(event_id(7)), lambda: f"dispatched up to {hub.last}")
            await cancel_and_wait(reading)  # the reader fails ...
            await stream.append(3)  # ... events come meanwhile ...
            reading = asyncio.create_task(reader.run())  # ... and its supervisor starts it again
            await eventually(lambda: hub.last == EventId.parse(event_id(10)), lambda: f"dispatched up to {hub.last}")
            batches = []
            while subscriber.delivered < 5:
                batches.append(await subscriber.next())
    finally:
        await cancel_and_wait(reading)
    assert subscriber.failure is None
    received = notify_pb2.SubscribeResponse.FromString(b"".join(batches))
    assert [event.event_id for event in received.events] == ids(6, 10)
