"""The soak: mixed writes through two booking instances, subscribers that come and go on two notify instances,
and one fault after another (notify SIGKILL, Redis restart, database connections terminated, booking SIGTERM),
for SOAK_SECONDS (60 in the suite; `make soak` runs 600). At the end every committed change has reached every
steady subscriber exactly once and in order, and the instances that lived through it all hold as much memory,
as many file descriptors and as many asyncio tasks as they did after warming up (within the bounds below)."""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import re
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from tests.support.events import EventSystem, Subscription, admin_on, assert_exactly, eventually
from tests.support.helpers import uid
from tests.support.servers import ServiceProcess, terminate_backends
from tests.support.writer import Writer

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "60"))
# Bounds for "flat": what a process may gain between the end of the warm-up and the end of the run.
MAX_RSS_GROWTH = 1.25  # times the warmed-up resident memory ...
MAX_RSS_SLACK_MB = 16  # ... plus this (allocator noise on a short run)
MAX_FD_GROWTH = 4
MAX_TASK_GROWTH = 4
# A steady subscriber that moved to a measured instance when the other was killed brings its connection (one
# descriptor) and its call (two tasks: grpc's and the handler) with it: legitimate growth, allowed on top.
STEADY_SUBSCRIBERS = 4


@dataclass
class Footprint:
    rss_mb: float
    fds: int
    tasks: int


async def footprint(process: ServiceProcess) -> Footprint:
    """The process's resident memory, open file descriptors and asyncio tasks (logged on SIGUSR1)."""
    assert process.process is not None
    pid = process.process.pid
    status = await asyncio.to_thread(Path(f"/proc/{pid}/status").read_text)
    rss_kb = int(re.search(r"VmRSS:\s+(\d+)", status)[1])  # type: ignore[index]
    fds = len(await asyncio.to_thread(os.listdir, f"/proc/{pid}/fd"))
    before = process.log().count("asyncio tasks:")
    process.signal(signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while process.log().count("asyncio tasks:") == before:
        assert time.monotonic() < deadline, "no task report"
        await asyncio.sleep(0.05)
    tasks = int(re.findall(r"asyncio tasks: (\d+)", process.log())[-1])
    return Footprint(rss_kb / 1024, fds, tasks)


def outgrown(before: Footprint, after: Footprint) -> list[str]:
    """What `after` holds beyond the bounds above, against `before` (nothing: flat)."""
    grown = []
    if after.rss_mb > before.rss_mb * MAX_RSS_GROWTH + MAX_RSS_SLACK_MB:
        grown.append("memory")
    if after.fds > before.fds + MAX_FD_GROWTH + STEADY_SUBSCRIBERS:
        grown.append("descriptors")
    if after.tasks > before.tasks + MAX_TASK_GROWTH + 2 * STEADY_SUBSCRIBERS:
        grown.append("tasks")
    return grown


async def settled(process: ServiceProcess, before: Footprint, within: float = 10.0) -> Footprint:
    """The process's footprint once it is flat against `before` (the streams that just ended release their
    resources as their calls wind down), or as it is after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        now = await footprint(process)
        if not outgrown(before, now) or time.monotonic() > deadline:
            return now
        await asyncio.sleep(0.2)


class SteadySubscriber:
    """A subscriber that stays for the whole run: when its stream ends (its instance killed or stopped), it
    resumes from its last event on the next instance that answers."""

    def __init__(self, addresses: list[str], first: int) -> None:
        self.subscription = Subscription("admin", uid("steady"))
        self._addresses = itertools.cycle(addresses[first:] + addresses[:first])
        self.resumes = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.subscription.open(next(self._addresses))
        self._task = asyncio.create_task(self._keep())

    async def _keep(self) -> None:
        while True:
            await eventually(lambda: self.subscription.error is not None, lambda: "", within=3600)
            error = self.subscription.error
            assert error is not None
            assert error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED), error
            self.resumes += 1
            await asyncio.sleep(0.2)
            await self.subscription.open(next(self._addresses), resume=True)

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self.subscription.close()


async def passing_subscribers(addresses: list[str], stop: asyncio.Event) -> int:
    """Subscribers that come and go (each for a moment, on a random instance); returns how many came."""
    count = 0
    while not stop.is_set():
        visitor = Subscription("user", f"cust-{count % 4}")
        try:
            await visitor.open(random.choice(addresses))
            await asyncio.sleep(random.uniform(0.05, 0.5))
        finally:
            await visitor.close()
        count += 1
    return count


@pytest.mark.timeout(SOAK_SECONDS + 300)
async def test_soak_every_change_delivered_and_resources_flat(
    system: EventSystem, channels: list[grpc.aio.Channel]
) -> None:
    steady_booking, faulty_booking = system.booking(), system.booking()
    steady_notify, faulty_notify = system.notify(), system.notify()
    addresses = [steady_notify.address, faulty_notify.address]
    steady = [SteadySubscriber(addresses, first=i % 2) for i in range(STEADY_SUBSCRIBERS)]
    for subscriber in steady:
        await subscriber.start()
    writers = [Writer([await admin_on(steady_booking, channels)]), Writer([await admin_on(faulty_booking, channels)])]
    for writer in writers:
        writer.start()
    stop_passing = asyncio.Event()
    passing = asyncio.create_task(passing_subscribers(addresses, stop_passing))

    async def kill_notify() -> None:
        faulty_notify.signal(signal.SIGKILL)
        await asyncio.to_thread(faulty_notify.wait)
        await asyncio.to_thread(faulty_notify.start)

    async def restart_redis() -> None:
        await asyncio.to_thread(system.redis.stop)
        await asyncio.sleep(1)
        await asyncio.to_thread(system.redis.start)

    async def terminate_connections() -> None:
        await terminate_backends(system.database_url, system.database_url.rpartition("/")[2])

    async def sigterm_booking() -> None:
        await asyncio.to_thread(faulty_booking.stop)
        await asyncio.to_thread(faulty_booking.start)

    faults: list[Callable[[], Awaitable[None]]] = [kill_notify, restart_redis, terminate_connections, sigterm_booking]
    warm_up = min(20.0, SOAK_SECONDS / 4)
    count = max(len(faults), int((SOAK_SECONDS - warm_up) // 60))  # one a minute, each kind at least once

    started = time.monotonic()
    await asyncio.sleep(warm_up)
    baseline = {p.module: await footprint(p) for p in (steady_booking, steady_notify)}
    applied = []
    for fault in itertools.islice(itertools.cycle(faults), count):
        await asyncio.sleep((SOAK_SECONDS - warm_up) / (count + 1))
        await fault()
        applied.append(fault.__name__)
    await asyncio.sleep(max(0.0, SOAK_SECONDS - (time.monotonic() - started)))

    stop_passing.set()
    came = await passing
    changes = sum([await writer.stop() for writer in writers])
    committed = await system.wait_relayed(changes)
    for subscriber in steady:
        await subscriber.subscription.wait_for(committed[-1][0], within=60)
        assert_exactly(subscriber.subscription, committed)
    final = {p.module: await settled(p, baseline[p.module]) for p in (steady_booking, steady_notify)}
    for subscriber in steady:
        await subscriber.stop()

    report = (
        f"{SOAK_SECONDS:.0f}s, {len(committed)} changes, faults {applied}, {came} passing subscribers, "
        f"resumes {[s.resumes for s in steady]}, footprint {baseline} -> {final}"
    )
    print(f"\nsoak: {report}")
    failed = {e.code() for writer in writers for e in writer.failures}
    assert not failed & {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}, report
    assert len(applied) >= 4, report
    assert any(s.resumes for s in steady), report
    for module, before in baseline.items():
        grown = outgrown(before, final[module])
        assert not grown, f"{module}: {', '.join(grown)} grew: {report}"
