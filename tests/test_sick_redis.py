"""Realtime through a sick Redis: full (writes refused with OOM), writes paused, everything paused, the server
stopped (SIGSTOP). Redis still accepts connections and may answer reads, so notify cannot tell from its own
reads alone: the relay, unable to publish, places events in the outbox and tells notify instances how far it is
ahead, and they follow the outbox until the stream has caught up.

Two booking and two notify instances, 100 changes/s, two subscribers on each notify instance. In every case
every committed change reaches every subscriber exactly once, in order, CreateBooking never fails, the first
change after the fault reaches subscribers within 3 s of its commit, p99 stays under 1 s and the max under 2 s
while on the outbox path, and both notify instances are back on Redis within 5 s of it being healthy. Each test
prints its figures.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
import pytest
import redis.asyncio as redis
from grpc_health.v1 import health_pb2

from tests.support.events import EventSystem, admin_on
from tests.support.realtime import (
    TimedSubscription,
    Writer,
    everyone_got_exactly_what_was_committed,
    latencies_ms,
    quantiles,
)

SERVING = health_pb2.HealthCheckResponse.SERVING
FALLBACK_AFTER = 2.0  # notify's default REDIS_FALLBACK_AFTER_SECONDS
pytestmark = pytest.mark.timeout(240)


@dataclass
class Fault:
    name: str
    start: Callable[[EventSystem], Awaitable[None]]
    end: Callable[[EventSystem], Awaitable[None]]  # Redis is healthy once it returns
    seconds: float


async def admin(system: EventSystem, *command: str | int) -> None:
    client = redis.Redis.from_url(system.redis.url)
    try:
        await client.execute_command(*command)  # type: ignore[no-untyped-call]
    finally:
        await client.aclose()


def signal_redis(sig: signal.Signals) -> Callable[[EventSystem], Awaitable[None]]:
    async def send(system: EventSystem) -> None:
        assert system.redis.process is not None
        os.kill(system.redis.process.pid, sig)

    return send


async def nothing(_system: EventSystem) -> None:
    return None


FAULTS = {
    "full": Fault(
        "Redis full (maxmemory reached, noeviction: writes refused with OOM, reads answered)",
        lambda system: admin(system, "CONFIG", "SET", "maxmemory", "1"),
        lambda system: admin(system, "CONFIG", "SET", "maxmemory", "0"),
        10,
    ),
    "paused-writes": Fault(
        "CLIENT PAUSE WRITE (writes wait, reads answered)",
        lambda system: admin(system, "CLIENT", "PAUSE", 10_000, "WRITE"),
        nothing,  # the pause ends by itself
        10,
    ),
    "paused-all": Fault(
        "CLIENT PAUSE ALL (connections accepted, nothing answered)",
        lambda system: admin(system, "CLIENT", "PAUSE", 20_000, "ALL"),
        nothing,
        20,
    ),
    "stopped": Fault(
        "SIGSTOP (the server frozen: nothing answered, not even connections)",
        signal_redis(signal.SIGSTOP),
        signal_redis(signal.SIGCONT),
        20,
    ),
}


async def through(
    system: EventSystem, watchers: list[TimedSubscription], channels: list[grpc.aio.Channel], fault: Fault
) -> None:
    await admin(system, "CONFIG", "SET", "maxmemory-policy", "noeviction")
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
    await fault.start(system)
    await asyncio.sleep(fault.seconds)
    await fault.end(system)
    healthy = time.monotonic()
    back = []
    for notifier in notifiers:
        await notifier.wait_health(SERVING, "redis")
        back.append(time.monotonic() - healthy)
    await asyncio.sleep(2)
    await everyone_got_exactly_what_was_committed(system, watchers, writer)

    first_write = min(
        (returned for returned in writer.returned.values() if returned >= began), default=None
    )  # the first change committed after the fault began
    assert first_write is not None
    first = max(latencies_ms(watchers, writer, first_write, first_write + 1e-6))
    switched = began + FALLBACK_AFTER + 1
    p50, p99, most = quantiles(latencies_ms(watchers, writer, switched, healthy))
    print(
        f"\n{fault.name}, {fault.seconds:g} s: first change after the fault reached every subscriber in "
        f"{first:.0f} ms; on the outbox path p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {most:.1f} ms; back on "
        f"Redis {max(back):.1f} s after it was healthy; 0 lost, 0 duplicated, {len(writer.returned)} changes"
    )
    assert not writer.failures  # checked by everyone_got_exactly_what_was_committed too
    assert first < 3000, f"the first change after the fault took {first:.0f} ms"
    assert p99 < 1000, f"p99 {p99:.0f} ms on the outbox path"
    assert most < 2000, f"max {most:.0f} ms on the outbox path"
    assert max(back) < 5, f"back on Redis {max(back):.1f} s after it was healthy"
    for notifier in notifiers:
        assert "following the outbox in PostgreSQL" in notifier.log()


@pytest.mark.parametrize("fault", FAULTS.keys())
async def test_through_a_sick_redis_every_change_reaches_every_subscriber_within_the_bounds(
    system: EventSystem, watchers: list[TimedSubscription], channels: list[grpc.aio.Channel], fault: str
) -> None:
    await through(system, watchers, channels, FAULTS[fault])
