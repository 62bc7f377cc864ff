"""Helpers for realtime under faults: two booking and two notify instances with subscribers on each (which note
when each event arrived) and a writer creating bookings at a steady rate (noting when each call returned), and
the bounds every change must meet."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2

from devtools.servers import free_port
from tests.support.events import EventSystem, Subscription, admin_on, eventually
from tests.support.helpers import scrape, uid
from tests.support.servers import ServiceProcess
from tests.support.writer import Writer


async def everyone_got_exactly_what_was_committed(
    system: EventSystem, watchers: list[Subscription], writer: Writer
) -> None:
    changes = await writer.stop()
    assert not writer.failures, f"{len(writer.failures)} writes failed while Redis was down"
    committed = await system.wait_relayed(changes)
    ids = [event_id for event_id, _, _ in committed]
    for watcher in watchers:

        def complete(w: Subscription = watcher) -> bool:
            return w.error is not None or len(w.ids) >= len(ids)

        def progress(w: Subscription = watcher) -> str:
            return f"a watcher has {len(w.ids)} of {len(ids)} events"

        await eventually(complete, progress)
        assert watcher.error is None, watcher.error
        assert watcher.ids == ids  # every change, once, in stream order, across both switches


def latencies_ms(watchers: list[Subscription], writer: Writer, since: float, until: float) -> list[float]:
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
    watchers: list[Subscription],
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
            watchers.append(Subscription("admin", uid("watcher")))
            await watchers[-1].open(notifier.address)
    writer = Writer([await admin_on(b, channels) for b in bookings], mix="create", per_second=100)
    writer.start()
    return notifiers, writer


FALLBACK_AFTER = 2.0  # notify's default REDIS_FALLBACK_AFTER_SECONDS


async def every_change_within_bounds(
    system: EventSystem,
    watchers: list[Subscription],
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
