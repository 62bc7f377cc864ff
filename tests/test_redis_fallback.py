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
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2

from booking_api.notify.v1 import notify_pb2, notify_pb2_grpc
from svc_common.dev.servers import free_port
from tests.support.events import EventSystem, admin_on, eventually
from tests.support.helpers import Caller, auth, scrape, uid
from tests.support.servers import ServiceProcess

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
FALLBACK_AFTER = 2.0  # notify's default REDIS_FALLBACK_AFTER_SECONDS


class TimedSubscription:
    """One subscriber's stream, across resumes: each event with the time it arrived."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.received: list[tuple[str, str, float]] = []  # (event_id, booking id, arrival)
        self.error: grpc.aio.AioRpcError | None = None
        self._channel: grpc.aio.Channel | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def ids(self) -> list[str]:
        return [event_id for event_id, _, _ in self.received]

    async def open(self, address: str | None = None, *, resume: bool = False) -> None:
        await self.close()
        self.address = address or self.address
        self._channel = grpc.aio.insecure_channel(self.address)
        stub = notify_pb2_grpc.NotifyServiceStub(self._channel)
        request = notify_pb2.SubscribeRequest(resume_after=self.ids[-1] if resume and self.ids else "")
        call = stub.Subscribe(request, metadata=auth("admin", uid("watcher")))
        await asyncio.wait_for(call.initial_metadata(), 30)
        self._task = asyncio.create_task(self._read(call))

    async def _read(
        self, call: grpc.aio.UnaryStreamCall[notify_pb2.SubscribeRequest, notify_pb2.SubscribeResponse]
    ) -> None:
        try:
            async for response in call:
                now = time.monotonic()
                self.received.extend((e.event_id, e.booking.id, now) for e in response.events)
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.CANCELLED:
                self.error = error

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._channel is not None:
            await self._channel.close()
            self._channel = None


class Writer:
    """CreateBooking at a steady rate over several booking instances; when each call returned."""

    def __init__(self, callers: list[Caller], per_second: float) -> None:
        self.callers = callers
        self.interval = 1 / per_second
        self.returned: dict[str, float] = {}  # booking id -> when its CreateBooking returned
        self.failures: list[grpc.aio.AioRpcError] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._runner: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._runner = asyncio.create_task(self._run())

    async def _one(self, caller: Caller) -> None:
        try:
            booking = await caller.create(provider_id=uid("prov"), customer_id="cust")
        except grpc.aio.AioRpcError as error:
            self.failures.append(error)
            return
        self.returned[booking.id] = time.monotonic()

    async def _run(self) -> None:
        start = time.monotonic()
        k = 0
        while not self._stop.is_set():
            delay = start + k * self.interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            self._tasks.append(asyncio.create_task(self._one(self.callers[k % len(self.callers)])))
            k += 1

    async def stop(self) -> int:
        self._stop.set()
        assert self._runner is not None
        await self._runner
        await asyncio.gather(*self._tasks)
        return len(self.returned)


@pytest.fixture
async def watchers() -> AsyncIterator[list[TimedSubscription]]:
    made: list[TimedSubscription] = []
    yield made
    for watcher in made:
        await watcher.close()


async def outage(
    system: EventSystem,
    watchers: list[TimedSubscription],
    channels: list[grpc.aio.Channel],
    *,
    seconds: float,
    lose_data: bool,
    resume_during: bool,
) -> tuple[list[ServiceProcess], Writer, float, float]:
    """Steady changes through two booking instances to subscribers on two notify instances while Redis is
    down for `seconds` (and comes back empty if `lose_data`); returns the notify instances, the writer, and
    when the outage began and ended."""
    bookings = [system.booking(), system.booking()]
    notifiers = [system.notify(), system.notify()]
    for notifier in notifiers:
        for _ in range(2):
            watchers.append(TimedSubscription(notifier.address))
            await watchers[-1].open()
    writer = Writer([await admin_on(b, channels) for b in bookings], per_second=100)
    writer.start()
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


async def everyone_got_exactly_what_was_committed(
    system: EventSystem, watchers: list[TimedSubscription], writer: Writer
) -> None:
    changes = await writer.stop()
    assert not writer.failures, f"{len(writer.failures)} writes failed while Redis was down"
    committed = await system.wait_relayed(changes)
    ids = [event_id for event_id, _, _ in committed]
    for watcher in watchers:

        def complete(w: TimedSubscription = watcher) -> bool:
            return w.error is not None or len(w.ids) >= len(ids)

        def progress(w: TimedSubscription = watcher) -> str:
            return f"a watcher has {len(w.ids)} of {len(ids)} events"

        await eventually(complete, progress)
        assert watcher.error is None, watcher.error
        assert watcher.ids == ids  # every change, once, in stream order, across both switches


def latencies_ms(watchers: list[TimedSubscription], writer: Writer, since: float, until: float) -> list[float]:
    """From each CreateBooking's return to each subscriber's receipt, for the writes that returned between
    `since` and `until`."""
    return sorted(
        (arrived - writer.returned[booking_id]) * 1000
        for watcher in watchers
        for _, booking_id, arrived in watcher.received
        if since <= writer.returned.get(booking_id, 0) < until
    )


async def test_redis_down_for_20_seconds_every_change_reaches_every_subscriber_from_postgresql(
    system: EventSystem, watchers: list[TimedSubscription], channels: list[grpc.aio.Channel]
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
        assert "back to Redis" in notifier.log()


async def test_redis_back_without_its_data_the_relay_republishes_and_nobody_misses_anything(
    system: EventSystem, watchers: list[TimedSubscription], channels: list[grpc.aio.Channel]
) -> None:
    notifiers, writer, _, _ = await outage(system, watchers, channels, seconds=6, lose_data=True, resume_during=False)
    await everyone_got_exactly_what_was_committed(system, watchers, writer)
    for notifier in notifiers:
        assert "back to Redis" in notifier.log()


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
