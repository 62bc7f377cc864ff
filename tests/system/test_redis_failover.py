"""Realtime through a Redis Sentinel failover: a primary, a replica and three sentinels (`redis-server
sentinel.conf --sentinel`) on loopback ports; two booking and two notify instances with
REDIS_URL=redis+sentinel://...; 100 changes/s; subscribers on both notify instances.

(a) the primary SIGKILLed; (b) a graceful SENTINEL FAILOVER (the old primary answers READONLY); (c) a failover
that loses writes the old primary acknowledged (its replica cut off first). In each, every committed change
reaches every subscriber exactly once, in order, with no gap, CreateBooking never fails, and the bounds of
tests.support.realtime.every_change_within_bounds hold; in (c) the relay publishes the lost tail again under the
same ids. Each test prints its figures. (d) without Sentinel: the stream loses its tail under the relay's live
connection (as when a connection moves to a new primary without an error), and the relay never appends after a
gap.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as redis
from prometheus_client import CollectorRegistry, Counter

from devtools.servers import SentinelGroup
from svc_common.redis_client import RedisConfig, connect, follow_failovers
from svc_common.supervisor import cancel_and_wait
from tests.support.events import EventSystem, Subscription, admin_on, eventually
from tests.support.helpers import scrape, uid
from tests.support.realtime import Metrics, back_on_redis, every_change_within_bounds, steady_changes
from tests.support.servers import stream_key

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
async def group(workdir: Path) -> AsyncIterator[SentinelGroup]:
    started = SentinelGroup(workdir / uid("sentinel"))
    await asyncio.to_thread(started.start)
    try:
        await primary_named(started)  # the sentinels agree on it
        await replica_known(started)  # and each knows a replica it could promote
        yield started
    finally:
        await asyncio.to_thread(started.stop)


async def command(port: int, *args: str | int) -> object:
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)
    try:
        return await client.execute_command(*args)  # type: ignore[no-untyped-call]
    finally:
        await client.aclose()


async def primary_named(group: SentinelGroup, other_than: int | None = None, within: float = 30) -> int:
    """The port of the primary the sentinels name (once it is not `other_than`) and that answers as one."""
    deadline = time.monotonic() + within
    while True:
        try:
            named = await command(group.sentinel_ports[0], "SENTINEL", "get-master-addr-by-name", group.service)
            port = int(named[1]) if isinstance(named, list) else None
            if port is not None and port != other_than:
                role = await command(port, "ROLE")
                if isinstance(role, list) and role[0] == b"master":
                    return port
        except redis.RedisError:
            pass
        assert time.monotonic() < deadline, f"no new primary after {within} s"
        await asyncio.sleep(0.05)


async def replica_known(group: SentinelGroup, within: float = 30) -> None:
    deadline = time.monotonic() + within
    for port in group.sentinel_ports:
        while True:
            replicas: Any = await command(port, "SENTINEL", "REPLICAS", group.service)
            # Sentinel refreshes what it knows of a replica every 10 s: until it has seen the link up ("ok"), a
            # failover is refused (NOGOODSLAVE).
            if any(replica.get(b"master-link-status") == b"ok" for replica in replicas or []):
                break
            assert time.monotonic() < deadline, f"sentinel {port} knows no ready replica after {within} s"
            await asyncio.sleep(0.05)


async def kill_primary(group: SentinelGroup, primary: int) -> None:
    group.node_at(primary).kill()


async def graceful_failover(group: SentinelGroup, _primary: int) -> None:
    await command(group.sentinel_ports[0], "SENTINEL", "FAILOVER", group.service)


async def failover_losing_writes(group: SentinelGroup, primary: int) -> None:
    """The replica stops hearing the primary, the primary acknowledges writes for half a second, then dies."""
    replica = next(node for node in group.nodes if node.port != primary)
    assert replica.process is not None
    os.kill(replica.process.pid, signal.SIGSTOP)  # it cannot reconnect meanwhile
    try:
        await command(primary, "CLIENT", "KILL", "TYPE", "replica")
        await asyncio.sleep(0.5)  # the relay publishes ~50 events only the primary holds
        group.node_at(primary).kill()
    finally:
        os.kill(replica.process.pid, signal.SIGCONT)


async def through_failover(
    system: EventSystem,
    group: SentinelGroup,
    watchers: list[Subscription],
    channels: list[grpc.aio.Channel],
    name: str,
    failover: Callable[[SentinelGroup, int], Awaitable[None]],
) -> list[str]:
    """Steady changes through a failover; returns the booking instances' logs."""
    metrics = Metrics()
    notifiers, writer = await steady_changes(system, watchers, channels, metrics, REDIS_URL=group.url)
    await asyncio.sleep(3)
    primary = await primary_named(group)
    for service in ("booking", "notify"):
        for port in getattr(metrics, service):
            assert scrape(port)[f"{service}_redis_failovers_total"] == 0  # none seen yet, and exported as 0
    began = time.monotonic()
    await failover(group, primary)
    await primary_named(group, other_than=primary)
    healthy = time.monotonic()
    back = await back_on_redis(notifiers, healthy)
    await asyncio.sleep(2)
    print(f"\n{name}: new primary named {healthy - began:.1f} s after the fault")
    await every_change_within_bounds(system, watchers, writer, name, began, healthy, back)
    # Each process counts the change of primary it saw (checked about once a second), once: the primary was
    # named seconds ago, so a count made on every check would be past 1 by now.
    for service in ("booking", "notify"):
        for port in getattr(metrics, service):
            await eventually(
                lambda p=port, s=service: scrape(p).get(f"{s}_redis_failovers_total", 0) >= 1,  # type: ignore[misc]
                lambda s=service: f"{s} counted no failover",  # type: ignore[misc]
            )
            assert scrape(port)[f"{service}_redis_failovers_total"] == 1, (service, port)
    return [process.log() for process in system.processes if process.module == "booking_service"]


async def test_primary_killed_every_change_reaches_every_subscriber(
    system: EventSystem, group: SentinelGroup, watchers: list[Subscription], channels: list[grpc.aio.Channel]
) -> None:
    await through_failover(system, group, watchers, channels, "Sentinel failover, primary SIGKILLed", kill_primary)


async def test_graceful_sentinel_failover_every_change_reaches_every_subscriber(
    system: EventSystem, group: SentinelGroup, watchers: list[Subscription], channels: list[grpc.aio.Channel]
) -> None:
    await through_failover(system, group, watchers, channels, "SENTINEL FAILOVER", graceful_failover)


async def test_a_failover_that_lost_acknowledged_writes_is_mended_from_the_outbox(
    system: EventSystem, group: SentinelGroup, watchers: list[Subscription], channels: list[grpc.aio.Channel]
) -> None:
    logs = await through_failover(
        system, group, watchers, channels, "Sentinel failover losing acknowledged writes", failover_losing_writes
    )
    # The new primary's stream holds the whole history again: a subscriber reading it from the start, on an
    # instance that remembers nothing, gets every change, the lost tail included, with no gap.
    committed = await system.wait_relayed(0)
    reader = Subscription("admin", uid("from-start"))
    await reader.open(
        system.notify(REDIS_URL=group.url, SUBSCRIBE_HISTORY_WINDOW="0").address, filters={"resume_after": "0-0"}
    )
    try:
        await reader.wait_for(committed[-1][0])
        assert reader.ids == [event_id for event_id, _, _ in committed]
    finally:
        await reader.close()
    republished = [line for log in logs for line in log.splitlines() if "before the published mark" in line]
    print("\n".join(republished))
    assert republished, "the new primary lacked nothing: the test did not lose writes"


async def test_a_blocking_reader_leaves_a_primary_replaced_by_a_graceful_failover_within_its_block_time(
    group: SentinelGroup,
) -> None:
    """SENTINEL FAILOVER leaves the old primary answering as a primary, with none of the new one's writes, until
    Sentinel turns it into a replica when it next reads its INFO (up to 10 s later). A reader in a blocking XREAD
    on it keeps its connection through the change (follow_failovers drops idle ones only), so the pool closes
    that connection as it comes back, and the next read goes to the new primary."""
    key = f"reader:{uid('stream')}"
    client = connect(RedisConfig(group.url), block_seconds=1.0)
    following = asyncio.create_task(
        follow_failovers([client], Counter("failovers", "seen", registry=CollectorRegistry()))
    )
    read: list[bytes] = []

    async def reader() -> None:
        position = "0-0"
        while True:
            try:
                reply: Any = await client.xread({key: position}, block=1000)
            except redis.RedisError:
                await asyncio.sleep(0.05)
                continue
            for _key, entries in reply or ():
                read.extend(entry_id for entry_id, _ in entries)
                position = entries[-1][0].decode()

    reading = asyncio.create_task(reader())
    try:
        primary = await primary_named(group)
        await command(primary, "XADD", key, "1-1", "n", "1")
        await eventually(lambda: read == [b"1-1"], lambda: f"read {read}")  # in a blocking read on the old one
        await graceful_failover(group, primary)
        new = await primary_named(group, other_than=primary)
        await command(new, "XADD", key, "2-2", "n", "2")
        written = time.monotonic()
        await eventually(lambda: b"2-2" in read, lambda: f"read {read} from the old primary", within=30)
        took = time.monotonic() - written
        print(f"\nthe reader read the new primary's entry {took:.1f} s after it was written")
        # Its block time (1 s), follow_failovers' interval (1 s), a failed call's back-off, and slack for a busy
        # machine; Sentinel's 10 s INFO period is what it must not wait for.
        assert took < 4, f"the reader stayed on the replaced primary for {took:.1f} s"
    finally:
        await cancel_and_wait(reading)
        await cancel_and_wait(following)
        await client.aclose()


async def test_a_stream_that_lost_its_tail_under_the_relays_live_connection_gets_it_again_and_no_gap(
    system: EventSystem, channels: list[grpc.aio.Channel]
) -> None:
    """(d) A failover the relay's connection does not see: the stream it appends to lost its last entries (a
    replica that had not received them took over, and the connection went on to it without an error). The relay
    must not append after that tail: it publishes the lost entries again, under the same ids, then the new ones,
    so the stream holds every event with no gap and a subscriber resuming from before the loss gets each."""
    booking = system.booking()
    admin = await admin_on(booking, channels)
    for _ in range(6):
        await admin.create(provider_id=uid("prov"), customer_id=uid("cust"))
    committed = await system.wait_relayed(6)
    key = stream_key(system.database_url)
    client = redis.Redis.from_url(system.redis.url)
    try:
        assert await stream_ids(client, key, 6) == [event_id for event_id, _, _ in committed]
        entries: Any = await client.xrange(key)
        async with client.pipeline(transaction=True) as pipe:  # what the replica had: all but the last three
            pipe.delete(key)
            for entry_id, fields in entries[:3]:
                pipe.xadd(key, fields, id=entry_id)
            await pipe.execute()
        for _ in range(4):
            await admin.create(provider_id=uid("prov"), customer_id=uid("cust"))
        committed = await system.wait_relayed(10)
        assert await stream_ids(client, key, 10) == [event_id for event_id, _, _ in committed], "a gap"
    finally:
        await client.aclose()
    assert "before the published mark" in booking.log()
    reader = Subscription("admin", uid("from-start"))
    await reader.open(system.notify(SUBSCRIBE_HISTORY_WINDOW="0").address, filters={"resume_after": committed[1][0]})
    try:
        await reader.wait_for(committed[-1][0])
        assert reader.ids == [event_id for event_id, _, _ in committed[2:]]
    finally:
        await reader.close()


async def stream_ids(client: redis.Redis, key: str, count: int, within: float = 10) -> list[str]:
    """The stream's ids once it holds `count` entries (or, after `within` seconds, those it holds)."""
    deadline = time.monotonic() + within
    while True:
        entries: Any = await client.xrange(key)
        if len(entries) >= count or time.monotonic() > deadline:
            return [entry_id.decode() for entry_id, _ in entries]
        await asyncio.sleep(0.05)
