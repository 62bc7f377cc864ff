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

from tests.support.events import EventSystem, Subscription, admin_on, eventually
from tests.support.helpers import Caller, uid
from tests.support.realtime import (
    FALLBACK_AFTER,
    Metrics,
    back_on_redis,
    every_change_within_bounds,
    steady_changes,
)
from tests.support.servers import ServiceProcess

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
    system: EventSystem, watchers: list[Subscription], channels: list[grpc.aio.Channel], fault: Fault
) -> None:
    await admin(system, "CONFIG", "SET", "maxmemory-policy", "noeviction")
    metrics = Metrics()
    notifiers, writer = await steady_changes(system, watchers, channels, metrics)
    await asyncio.sleep(3)

    began = time.monotonic()
    await fault.start(system)
    await asyncio.sleep(FALLBACK_AFTER + 1)
    # Mid-fault: the relay says it cannot publish, notify that it follows the outbox, which is ahead of the stream.
    assert metrics.highest("booking", "booking_relay_publish_blocked") == 1
    assert metrics.highest("notify", "notify_events_from_postgres") == 1
    assert metrics.highest("booking", "booking_stream_behind_outbox_events") > 0
    await asyncio.sleep(fault.seconds - FALLBACK_AFTER - 1)
    await fault.end(system)
    healthy = time.monotonic()
    back = await back_on_redis(notifiers, healthy)
    await asyncio.sleep(2)
    label = f"{fault.name}, {fault.seconds:g} s"
    await every_change_within_bounds(system, watchers, writer, label, began, healthy, back)
    assert metrics.highest("booking", "booking_relay_publish_blocked") == 0
    assert metrics.highest("booking", "booking_stream_behind_outbox_events") == 0
    assert metrics.highest("notify", "notify_events_from_postgres") == 0
    for notifier in notifiers:
        assert "following the outbox in PostgreSQL" in notifier.log()


@pytest.mark.parametrize("fault", FAULTS.keys())
async def test_through_a_sick_redis_every_change_reaches_every_subscriber_within_the_bounds(
    system: EventSystem, watchers: list[Subscription], channels: list[grpc.aio.Channel], fault: str
) -> None:
    await through(system, watchers, channels, FAULTS[fault])


async def _lone_changes(
    system: EventSystem, channels: list[grpc.aio.Channel], **notify_env: str
) -> tuple[Caller, ServiceProcess, Subscription]:
    """One booking and one notify instance, and a subscriber on notify that has seen one change come through
    Redis; returns a caller of booking, notify, and the subscriber."""
    await admin(system, "CONFIG", "SET", "maxmemory-policy", "noeviction")
    booking, notifier = system.booking(), system.notify(**notify_env)
    watcher = Subscription("admin", uid("ops"))
    await watcher.open(notifier.address)
    caller = await admin_on(booking, channels)
    await caller.create(provider_id=uid("prov"), customer_id=uid("cust"))
    await eventually(lambda: len(watcher.events) == 1, lambda: f"{len(watcher.events)} events", within=30)
    return caller, notifier, watcher


async def test_a_lone_change_while_redis_refuses_writes_reaches_subscribers_through_the_outbox(
    system: EventSystem, channels: list[grpc.aio.Channel]
) -> None:
    """The relay tells notify the outbox is ahead even when one event alone waits (the newest placed is then the
    first unpublished): with nothing else committed, it must still arrive while Redis is full."""
    caller, notifier, watcher = await _lone_changes(system, channels)
    await admin(system, "CONFIG", "SET", "maxmemory", "1")
    try:
        made = await caller.create(provider_id=uid("prov"), customer_id=uid("cust"))
        await eventually(lambda: len(watcher.events) == 2, lambda: "the lone change never came", within=30)
        assert watcher.events[-1].booking.id == made.id
        assert "following the outbox in PostgreSQL" in notifier.log()
    finally:
        await admin(system, "CONFIG", "SET", "maxmemory", "0")
        await watcher.close()


async def test_redis_refusing_writes_for_less_than_the_fallback_delay_keeps_notify_on_redis(
    system: EventSystem, channels: list[grpc.aio.Channel]
) -> None:
    """A fault shorter than REDIS_FALLBACK_AFTER_SECONDS (here 8 s; the fault lasts 1.5 s) is waited out on
    Redis: the changes made meanwhile arrive from the stream once the relay can publish, with no switch."""
    caller, notifier, watcher = await _lone_changes(system, channels, REDIS_FALLBACK_AFTER_SECONDS="8")
    await admin(system, "CONFIG", "SET", "maxmemory", "1")
    try:
        made = [(await caller.create(provider_id=uid("prov"), customer_id=uid("c"))).id for _ in range(3)]
        await asyncio.sleep(1.5)
    finally:
        await admin(system, "CONFIG", "SET", "maxmemory", "0")
    await eventually(lambda: len(watcher.events) == 4, lambda: f"{len(watcher.events)} of 4 events", within=30)
    await watcher.close()
    assert [e.booking.id for e in watcher.events[1:]] == made
    assert "following the outbox in PostgreSQL" not in notifier.log()
