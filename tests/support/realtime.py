"""Helpers for realtime under faults: subscribers that note when each event arrived, and a writer that creates
bookings at a steady rate through several booking instances, noting when each call returned."""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2

from booking_api.notify.v1 import notify_pb2, notify_pb2_grpc
from svc_common.dev.servers import free_port
from tests.support.events import EventSystem, admin_on, eventually
from tests.support.helpers import Caller, auth, scrape, uid
from tests.support.servers import ServiceProcess


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


def quantiles(latencies: list[float]) -> tuple[float, float, float]:
    """p50, p99 and max of sorted latencies (at least two)."""
    cuts = statistics.quantiles(latencies, n=100)
    return cuts[49], cuts[98], latencies[-1]


@dataclass
class Metrics:
    """Where each instance of `steady_changes` serves its metrics."""

    booking: list[int] = field(default_factory=list)
    notify: list[int] = field(default_factory=list)

    def highest(self, service: str, name: str) -> float:
        """The highest value of `name` among the instances of `service` ("booking" or "notify")."""
        return max(scrape(port).get(name, 0.0) for port in getattr(self, service))


async def steady_changes(
    system: EventSystem,
    watchers: list[TimedSubscription],
    channels: list[grpc.aio.Channel],
    metrics: Metrics | None = None,
    **env: str,
) -> tuple[list[ServiceProcess], Writer]:
    """Two booking and two notify instances (with settings `env`; serving metrics on free ports noted in
    `metrics`, if given), two subscribers on each notify instance, and a writer creating 100 bookings a second
    through both booking instances (started)."""

    def serving(ports: list[int]) -> dict[str, str]:
        if metrics is None:
            return {}
        ports.append(free_port())
        return {"METRICS_LISTEN": f"127.0.0.1:{ports[-1]}"}

    ports = metrics or Metrics()
    bookings = [system.booking(**env, **serving(ports.booking)) for _ in range(2)]
    notifiers = [system.notify(**env, **serving(ports.notify)) for _ in range(2)]
    for notifier in notifiers:
        for _ in range(2):
            watchers.append(TimedSubscription(notifier.address))
            await watchers[-1].open()
    writer = Writer([await admin_on(b, channels) for b in bookings], per_second=100)
    writer.start()
    return notifiers, writer


FALLBACK_AFTER = 2.0  # notify's default REDIS_FALLBACK_AFTER_SECONDS


async def every_change_within_bounds(
    system: EventSystem,
    watchers: list[TimedSubscription],
    writer: Writer,
    fault: str,
    began: float,
    healthy: float,
    back: list[float],
) -> None:
    """Every committed change reached every subscriber once, in order, and CreateBooking never failed; the first
    change after the fault (`began`) reached every subscriber within 3 s of its commit; from when notify follows
    the outbox until every instance is back on Redis, p99 under 1 s and max under 2 s; every notify instance was
    back on Redis (`back`: seconds after `healthy`) within 5 s. Prints the figures, then checks each bound apart."""
    await everyone_got_exactly_what_was_committed(system, watchers, writer)
    first_write = min((returned for returned in writer.returned.values() if returned >= began), default=None)
    assert first_write is not None, "no change committed after the fault began"
    first = max(latencies_ms(watchers, writer, first_write, first_write + 1e-6))
    # From when notify follows the outbox until every instance is back on Redis (a quick failover may end first).
    during = latencies_ms(watchers, writer, began + FALLBACK_AFTER + 1, healthy + max(back) + 1)
    p50, p99, most = quantiles(during) if len(during) > 1 else (0.0, 0.0, 0.0)
    outbox_path = f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {most:.1f} ms" if len(during) > 1 else "not taken"
    slowest = max(latencies_ms(watchers, writer, began, healthy + max(back) + 1))
    print(
        f"\n{fault}: first change after the fault reached every subscriber in {first:.0f} ms; on the outbox "
        f"path {outbox_path}; slowest during the fault {slowest:.0f} ms; back on Redis {max(back):.1f} s after "
        f"it was healthy; 0 lost, 0 duplicated, {len(writer.returned)} changes"
    )
    assert first < 3000, f"the first change after the fault took {first:.0f} ms"
    assert slowest < 3000, f"a change committed during the fault took {slowest:.0f} ms"
    assert p99 < 1000, f"p99 {p99:.0f} ms on the outbox path"
    assert most < 2000, f"max {most:.0f} ms on the outbox path"
    assert max(back) < 5, f"back on Redis {max(back):.1f} s after it was healthy"


async def back_on_redis(notifiers: list[ServiceProcess], healthy: float) -> list[float]:
    """Wait until every notify instance reports `redis` SERVING again; how long after `healthy` each did."""
    back = []
    for notifier in notifiers:
        await notifier.wait_health(health_pb2.HealthCheckResponse.SERVING, "redis")
        back.append(time.monotonic() - healthy)
    return back
