"""What `make bench` does to the systems and how it measures them: the Node.js subscribers, the paced writers
(gRPC and HTTP), CPU and latency figures, the scenarios, the faults injected at a moment, and py-spy profiles."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as redis

from devtools.servers import PostgresServer, RedisServer, SentinelGroup
from tests.bench.common import progress
from tests.bench.fanout_systems import BENCH, PER_PROCESS, SETTLE_SECONDS, Sent, System, ThisProject, node_env
from tests.support.helpers import token
from tests.support.servers import PROJECT

# --- subscribers -------------------------------------------------------------------------------------------


@dataclass
class Received:
    """What the subscribers got: each change's receipt times and how many distinct subscribers got it."""

    times: dict[str, list[float]] = field(default_factory=dict)
    streams: dict[str, int] = field(default_factory=dict)
    resumes: int = 0


class Subscribers:
    """`count` subscribers of one system on `target`, in Node.js processes of `per_process` each."""

    def __init__(
        self, workdir: Path, name: str, mode: str, target: str, count: int, per_process: int = PER_PROCESS
    ) -> None:
        shares = [min(per_process, count - start) for start in range(0, count, per_process)]
        self.outs = [str(workdir / f"{name}-{n}.json") for n in range(len(shares))]
        bearer = [token("admin", "bench-subscriber")] if mode.startswith("grpc") else []
        with (workdir / "clients.log").open("ab") as log:
            self.processes = [
                subprocess.Popen(
                    ["node", str(BENCH / "bench_client.mjs"), mode, target, str(share), out, *bearer],
                    cwd=PROJECT,
                    env=node_env(),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
                for share, out in zip(shares, self.outs, strict=True)
            ]

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 120
        while not all(Path(out + ".ready").exists() for out in self.outs):
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.processes):
                self.kill()
                raise RuntimeError("subscriber processes did not get ready")
            time.sleep(0.1)

    def kill(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()

    def finish(self) -> Received:
        received = Received()
        for process, out in zip(self.processes, self.outs, strict=True):
            process.send_signal(signal.SIGTERM)
            process.wait(120)
            data = json.loads(Path(out).read_text())
            for key, times in data["changes"].items():
                received.times.setdefault(key, []).extend(t / 1000 for t in times)
                received.streams[key] = received.streams.get(key, 0) + data["streams"][key]
            received.resumes += data["resumes"]
        return received


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of the live processes `pids`."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def connection_split(pids: list[int], port: int) -> str:
    """How the kernel spread the clients' TCP connections to `port` over the instance's workers (`pids`: a
    supervisor first, then its workers), e.g. "3+1", most first; "" for an instance of one process. SO_REUSEPORT
    places whole connections, so a 4-0 split puts every subscriber on one worker."""
    workers = pids[1:]
    if len(workers) < 2:
        return ""
    established = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()  # sl, local address, remote address, state, ..., inode (10th)
                if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    established.add(f"socket:[{fields[9]}]")
    counts = []
    for pid in workers:
        count = 0
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    count += os.readlink(fd) in established
        counts.append(count)
    return "+".join(str(count) for count in sorted(counts, reverse=True))


def percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))] if ordered else float("nan")


@dataclass
class Run:
    """What one scenario run of one system measured."""

    subscribers: int
    seconds: float
    changes: int
    received: int  # (change, subscriber) pairs received at least once
    latencies: list[float]  # ms, every receipt of a committed change
    writes: list[float]  # ms, each write's own call
    resumes: int
    cpu: float | None  # CPU seconds of the subscribers' instance (None across a restart)
    writes_failed: int
    split: str = ""  # the subscribers' connections per worker ("3+1"), where the instance has workers


def measured(
    sent: Sent, failed: int, received: Received, subscribers: int, seconds: float, cpu: float | None, split: str = ""
) -> Run:
    return Run(
        subscribers=subscribers,
        seconds=seconds,
        changes=len(sent),
        received=sum(min(received.streams.get(key, 0), subscribers) for key in sent),
        latencies=[(t - sent[key][0]) * 1000 for key in sent for t in received.times.get(key, ())],
        writes=[(returned - t0) * 1000 for t0, returned in sent.values()],
        resumes=received.resumes,
        cpu=cpu,
        writes_failed=failed,
        split=split,
    )


def summary(runs: list[Run]) -> dict[str, Any]:
    """The figures of one or more runs of one system (rounds pooled)."""
    latencies = sorted(t for run in runs for t in run.latencies)
    writes = sorted(t for run in runs for t in run.writes)
    expected = sum(run.subscribers * run.changes for run in runs)
    received = sum(run.received for run in runs)
    result: dict[str, Any] = {
        "subscribers": runs[0].subscribers,
        "rounds": len(runs),
        "changes": sum(run.changes for run in runs),
        "writes_failed": sum(run.writes_failed for run in runs),
        "expected": expected,
        "delivered": len(latencies),
        "lost": expected - received,
        "duplicates": len(latencies) - received,
        "resumes": sum(run.resumes for run in runs),
        "deliveries_per_s": round(len(latencies) / sum(run.seconds for run in runs)),
        "p50_ms": round(percentile(latencies, 0.50), 2),
        "p99_ms": round(percentile(latencies, 0.99), 2),
        "max_ms": round(latencies[-1], 2) if latencies else None,
        "write_p50_ms": round(percentile(writes, 0.50), 2),  # the write's own call, send to return
        "_latencies": latencies,
    }
    if any(run.split for run in runs):
        result["connection_split"] = [run.split for run in runs]
    if all(run.cpu is not None for run in runs):
        cpu = sum(run.cpu or 0.0 for run in runs)
        result["cpu_us_per_delivery"] = round(cpu / max(len(latencies), 1) * 1e6, 1)
    return result


# --- scenarios ---------------------------------------------------------------------------------------------


async def scenario(
    system: System,
    workdir: Path,
    name: str,
    subscribers: int,
    rate: float,
    seconds: float,
    fault: Callable[[], Coroutine[Any, Any, None]] | None = None,
) -> Run:
    progress(f"{system.name}: {name}: {subscribers} subscribers, {rate:g} changes/s for {seconds:g} s")
    clients = Subscribers(workdir, f"{system.mode}-{name}", system.mode, system.target, subscribers, system.per_process)
    try:
        await asyncio.to_thread(clients.wait_ready)
        await asyncio.sleep(1)  # the same pause for every system between its subscribers' start and the writes
        pids = system.instance_pids()
        split = connection_split(pids, int(system.target.rsplit(":", 1)[1]))
        cpu_before = cpu_seconds(pids)
        faulting = asyncio.create_task(fault()) if fault is not None else None
        sent, failed = await system.write(rate, seconds)
        if faulting is not None:
            await faulting
        await asyncio.sleep(SETTLE_SECONDS if fault is None else 3 * SETTLE_SECONDS)
        cpu = cpu_seconds(pids) - cpu_before if fault is None else None
        run = measured(sent, failed, await asyncio.to_thread(clients.finish), subscribers, seconds, cpu, split)
    except BaseException:
        clients.kill()
        raise
    brief = summary([run])
    spread = f", connections per worker {split}" if split else ""
    progress(
        f"  p50 {brief['p50_ms']} ms, p99 {brief['p99_ms']} ms, lost {brief['lost']} of {brief['expected']}{spread}"
    )
    return run


def kill_instance_at(system: System, after: float) -> Callable[[], Coroutine[Any, Any, None]]:
    async def fault() -> None:
        await asyncio.sleep(after)
        progress(f"  SIGKILL the subscribers' instance of {system.name}, then restart it")
        system.kill_instance()
        await asyncio.to_thread(system.restart_instance)

    return fault


def restart_redis_at(rds: RedisServer, after: float, down: float = 5.0) -> Callable[[], Coroutine[Any, Any, None]]:
    async def fault() -> None:
        await asyncio.sleep(after)
        progress(f"  Redis stopped for {down:g} s, then started")
        await asyncio.to_thread(rds.stop)
        await asyncio.sleep(down)
        await asyncio.to_thread(rds.start)

    return fault


def redis_sick_at(
    rds: RedisServer, after: float, name: str, sick: Sequence[Any], well: Sequence[Any] | None, seconds: float = 10.0
) -> Callable[[], Coroutine[Any, Any, None]]:
    """Redis made sick by the command `sick` for `seconds` (then made well by `well`, or well by itself)."""

    async def fault() -> None:
        await asyncio.sleep(after)
        progress(f"  Redis {name} for {seconds:g} s")
        client = redis.Redis.from_url(rds.url)
        try:
            await client.execute_command("CONFIG", "SET", "maxmemory-policy", "noeviction")  # type: ignore[no-untyped-call]
            await client.execute_command(*sick)  # type: ignore[no-untyped-call]
            await asyncio.sleep(seconds)
            if well is not None:
                await client.execute_command(*well)  # type: ignore[no-untyped-call]
        finally:
            await client.aclose()

    return fault


async def sentinel_failover(workdir: Path, pg: PostgresServer, args: argparse.Namespace, at: float) -> dict[str, Any]:
    """This project on a Redis primary, a replica and three Sentinels (down after 1 s), the primary SIGKILLed
    `at` seconds into the writes. (The reference's adapter takes one Redis URL and cannot follow a failover.)"""
    group = SentinelGroup(workdir / "sentinel")
    await asyncio.to_thread(group.start)
    try:
        system = ThisProject(workdir, pg, group, (args.booking_workers, args.notify_workers))
        try:

            async def fault() -> None:
                await asyncio.sleep(at)
                progress("  the Redis primary SIGKILLed; Sentinel promotes the replica")
                await asyncio.to_thread(group.primary.kill)

            run = await scenario(
                system, workdir, "sentinel-failover", args.subscribers, args.rate, args.fault_seconds, fault
            )
        finally:
            system.stop()
    finally:
        await asyncio.to_thread(group.stop)
    return summary([run])


# The sick states the bench puts Redis in (issue 19): a name, the command that makes it sick, the one that ends it.
SICK_REDIS = {
    "redis_full": (
        "full (maxmemory, noeviction)",
        ("CONFIG", "SET", "maxmemory", "1"),
        ("CONFIG", "SET", "maxmemory", "0"),
    ),
    "redis_paused": ("paused (CLIENT PAUSE ALL)", ("CLIENT", "PAUSE", "10000", "ALL"), None),
}


def profile(pids: list[int], seconds: float, out: Path) -> list[subprocess.Popen[bytes]]:
    """py-spy recording `pids` for `seconds` (collapsed stacks, one file per process), if py-spy is installed."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        progress("py-spy is not installed: no profile")
        return []
    out.mkdir(parents=True, exist_ok=True)
    return [
        subprocess.Popen(
            [
                spy,
                "record",
                "--nonblocking",
                "--format",
                "raw",
                "-d",
                str(int(seconds)),
                "-p",
                str(pid),
                "-o",
                str(out / f"{pid}.txt"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for pid in pids
    ]
