"""Realtime fan-out, side by side with the system it replaces, in one run.

    python -m tests.bench.bench_events [--seconds 10] [--rounds 3] [--rate 100] [--subscribers 200]
        [--steps 200,500,1000,2000] [--step-seconds 8] [--fault-seconds 24] [--idle 2000] [--no-fsync]
        [--booking-workers N] [--notify-workers N] [--only-steady] [--profile]

The reference is the realtime path of the Node/Express backend this project replaces, rebuilt as it was
(tests/bench/socketio_server.mjs): Socket.IO 4 with the official Redis adapter on two servers, the subscribers
on one, the writes (HTTP, a row in PostgreSQL, then io.emit of the booking event) on the other. This project:
the subscribers on one notify_service instance, the writes through booking_service (CreateBooking and
DeleteBooking, alternating), both with their default workers (one per core). The systems take turns on the same
PostgreSQL and Redis servers, driven by the same Node.js subscriber program (tests/bench/bench_client.mjs) and
the same paced writer; latency runs from the send of each write to its receipt by each subscriber.

Scenarios:
- steady: `subscribers` on one instance, `rate` changes/s, in `rounds` rounds of `seconds`, the systems taking
  turns: p50, p99, max, server CPU per delivery (the CPU time of every process of the subscribers' instance
  over the run, divided by the deliveries), lost; `--profile` adds py-spy's hottest functions of notify;
- capacity: subscribers on one instance rising through `steps` at `rate`: deliveries/s and p99 of each step, and
  the most deliveries/s held with p99 under 100 ms and nothing lost;
- faults: the subscribers' instance SIGKILLed (all its processes) and restarted; Redis restarted (AOF on, down
  for 5 s); Redis full for 10 s (maxmemory reached, noeviction); Redis paused for 10 s (CLIENT PAUSE ALL): lost
  deliveries of (subscribers x committed changes), failed writes, p99 and max latency; and, for this project
  only, a Sentinel failover (a primary, a replica and three Sentinels deciding after 1 s; the primary SIGKILLed):
  the reference's adapter takes one Redis URL (node-redis createClient), so it cannot follow one;
- memory: server RSS per idle subscription, against a bare grpc.aio fan-out server.

Results: a table on the terminal, .local/bench/events.json, and .local/bench/latency_cdf.png (steady latency).
Progress goes to stderr while it runs.
"""

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
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import grpc
import httpx
import redis.asyncio as redis

from booking_api.booking.v1 import booking_pb2, booking_pb2_grpc, events_pb2
from booking_api.notify.v1 import notify_pb2, notify_pb2_grpc
from svc_common.dev.servers import PostgresServer, RedisServer, SentinelGroup, children, free_port, wait_for_port
from tests.bench.common import OUT_DIR, open_loop, progress, run_in_workdir
from tests.support.helpers import JWT_SECRET, auth, token, ts
from tests.support.servers import PROJECT, ServiceProcess

BASELINE_STREAM = "bench:baseline"
STREAM = "bench:events"
EPOCH = datetime(2045, 1, 1, tzinfo=UTC)
NODE_DIR = PROJECT / ".local" / "bench-node"
BENCH = PROJECT / "tests" / "bench"
NODE_PACKAGES = {
    "@grpc/grpc-js": "1",
    "socket.io": "4",
    "socket.io-client": "4",
    "@socket.io/redis-adapter": "8",
    "redis": "4",
    "pg": "8",
}
PER_PROCESS = 500  # subscribers per Node.js process
SETTLE_SECONDS = 3.0  # after the last write, for the last deliveries
HELD_P99_MS = 100.0


def node_modules() -> Path:
    """The Node.js packages of the clients and of the reference system, installed on first use."""
    modules = NODE_DIR / "node_modules"
    if not all((modules / name).exists() for name in NODE_PACKAGES):
        npm = shutil.which("npm")
        if npm is None or shutil.which("node") is None:
            raise SystemExit("bench_events needs Node.js and npm (apt-get install nodejs npm)")
        NODE_DIR.mkdir(parents=True, exist_ok=True)
        progress(f"installing {', '.join(NODE_PACKAGES)} under {NODE_DIR}")
        packages = [f"{name}@{version}" for name, version in NODE_PACKAGES.items()]
        subprocess.run(
            [npm, "install", "--silent", "--no-audit", "--no-fund", "--prefix", str(NODE_DIR), *packages], check=True
        )
    return modules


def node_env() -> dict[str, str]:
    return {**os.environ, "BENCH_NODE_MODULES": str(node_modules())}


# --- subscribers -------------------------------------------------------------------------------------------


@dataclass
class Received:
    """What the subscribers got: each change's receipt times and how many distinct subscribers got it."""

    times: dict[str, list[float]] = field(default_factory=dict)
    streams: dict[str, int] = field(default_factory=dict)
    resumes: int = 0


class Subscribers:
    """`count` subscribers of one system on `target`, in Node.js processes of PER_PROCESS each."""

    def __init__(self, workdir: Path, name: str, mode: str, target: str, count: int) -> None:
        shares = [min(PER_PROCESS, count - start) for start in range(0, count, PER_PROCESS)]
        self.outs = [str(workdir / f"{name}-{n}.json") for n in range(len(shares))]
        bearer = [token("admin", "bench-subscriber")] if mode == "grpc" else []
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


# --- writers -----------------------------------------------------------------------------------------------


Sent = dict[str, tuple[float, float]]  # change key -> (when its write was sent, when it returned)


async def paced(rate: float, seconds: float, write: Callable[[int], Awaitable[str]]) -> tuple[Sent, int]:
    """Start `write(k)` `rate` times per second, whatever the writes before it are doing (open loop: a write
    held up by a fault does not hold up the next); returns each committed change's send and return times, and
    how many writes failed."""
    sent: Sent = {}
    failed: list[BaseException] = []

    async def timed(k: int) -> None:
        t0 = time.time()
        try:
            key = await write(k)
        except (grpc.aio.AioRpcError, httpx.HTTPError) as exc:  # not committed: not expected either
            failed.append(exc)
        else:
            sent[key] = (t0, time.time())

    started = await open_loop(rate, seconds, timed)
    if failed:
        kinds = sorted({type(exc).__name__ for exc in failed})
        progress(f"  {len(failed)} of {started} writes failed ({', '.join(kinds)}): their changes are not expected")
    return sent, len(failed)


def booking_fields(k: int, provider: str) -> tuple[datetime, datetime, dict[str, str]]:
    start = EPOCH + timedelta(hours=k)
    ids = {"customer_id": "bench-customer", "provider_id": provider, "service_id": "svc"}
    return start, start + timedelta(minutes=30), ids


async def write_bookings(address: str, rate: float, seconds: float) -> tuple[Sent, int]:
    """This project's changes: CreateBooking calls (a new provider for each run, so no slot is taken)."""
    metadata = auth("admin", "bench-writer")
    provider = f"bench-provider-{uuid.uuid4().hex[:8]}"
    async with grpc.aio.insecure_channel(address) as channel:
        stub = booking_pb2_grpc.BookingServiceStub(channel)

        async def write(k: int) -> str:
            start, end, ids = booking_fields(k, provider)
            booking = booking_pb2.Booking(start_time=ts(start), end_time=ts(end))
            booking.customer_id, booking.provider_id, booking.service_id = ids.values()
            request = booking_pb2.CreateBookingRequest(booking=booking)
            created = await stub.CreateBooking(request, metadata=metadata, timeout=10)
            return f"{created.booking.id}/1"

        return await paced(rate, seconds, write)


async def write_http(base_url: str, rate: float, seconds: float) -> tuple[Sent, int]:
    """The reference system's changes: the same bookings created through its HTTP API."""
    provider = f"bench-provider-{uuid.uuid4().hex[:8]}"
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    async with httpx.AsyncClient(base_url=base_url, timeout=10, limits=limits) as client:

        async def write(k: int) -> str:
            start, end, ids = booking_fields(k, provider)
            body = {**ids, "start_time": start.isoformat(), "end_time": end.isoformat()}
            response = await client.post("/bookings", json=body)
            response.raise_for_status()
            return f"{response.json()['id']}/1"

        return await paced(rate, seconds, write)


# --- the two systems ---------------------------------------------------------------------------------------


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of the live processes `pids`."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


class System(Protocol):
    name: str
    mode: str  # the subscriber client's mode

    @property
    def target(self) -> str: ...
    def instance_pids(self) -> list[int]: ...
    def kill_instance(self) -> None: ...
    def restart_instance(self) -> None: ...
    async def write(self, rate: float, seconds: float) -> tuple[Sent, int]: ...
    def stop(self) -> None: ...


class ThisProject:
    name = "this project"
    mode = "grpc"

    def __init__(
        self, workdir: Path, pg: PostgresServer, rds: RedisServer | SentinelGroup, workers: tuple[str, str]
    ) -> None:
        env = {"REDIS_URL": rds.url, "JWT_SECRET": JWT_SECRET, "EVENT_STREAM_KEY": STREAM, "DATABASE_URL": pg.url}
        booking_workers, notify_workers = ({"WORKERS": n} if n else {} for n in workers)
        self.booking = ServiceProcess("booking_service", {**env, **booking_workers}, workdir)
        # DATABASE_URL: while Redis is down, notify follows the outbox (notify_service.fallback).
        self.notify = ServiceProcess("notify_service", {**env, **notify_workers}, workdir)
        self.booking.start()
        self.notify.start()

    @property
    def target(self) -> str:
        return self.notify.address

    def instance_pids(self) -> list[int]:
        assert self.notify.process is not None
        return [self.notify.process.pid, *children(self.notify.process.pid)]

    def kill_instance(self) -> None:
        for pid in reversed(self.instance_pids()):  # its workers, then its supervisor: a crash of the whole
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.notify.wait()

    def restart_instance(self) -> None:
        self.notify.start()

    async def write(self, rate: float, seconds: float) -> tuple[Sent, int]:
        return await write_bookings(self.booking.address, rate, seconds)

    def stop(self) -> None:
        self.notify.stop()
        self.booking.stop()


class SocketIo:
    name = "Socket.IO + Redis adapter"
    mode = "sio"

    def __init__(self, workdir: Path, pg: PostgresServer, rds: RedisServer, _workers: tuple[str, str]) -> None:
        self._workdir, self._pg, self._rds = workdir, pg, rds
        self.subscribers_port, self.writes_port = free_port(), free_port()
        self.writes = self._spawn(self.writes_port, pg.url)
        self.instance = self._spawn(self.subscribers_port)

    def _spawn(self, port: int, database_url: str | None = None) -> subprocess.Popen[bytes]:
        with (self._workdir / f"socketio-{port}.log").open("ab") as log:
            process = subprocess.Popen(
                [
                    "node",
                    str(BENCH / "socketio_server.mjs"),
                    str(port),
                    self._rds.url,
                    *([database_url] if database_url else []),
                ],
                cwd=PROJECT,
                env=node_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for_port(port)
        return process

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.subscribers_port}"

    def instance_pids(self) -> list[int]:
        return [self.instance.pid]

    def kill_instance(self) -> None:
        self.instance.kill()
        self.instance.wait()

    def restart_instance(self) -> None:
        self.instance = self._spawn(self.subscribers_port)

    async def write(self, rate: float, seconds: float) -> tuple[Sent, int]:
        return await write_http(f"http://127.0.0.1:{self.writes_port}", rate, seconds)

    def stop(self) -> None:
        for process in (self.instance, self.writes):
            process.terminate()
            process.wait(30)


class BareGrpc:
    """The floor of grpc.aio: a bare fan-out server (one XREAD loop writing each entry's ready-made response
    to every open stream; no auth, filters, bounds, history, PostgreSQL or relay; one process), fed by XADDs of
    a response like this project's. Steady scenario only: it shows what any grpc.aio fan-out costs."""

    name = "bare grpc.aio fan-out"
    mode = "grpc"

    def __init__(self, workdir: Path, pg: PostgresServer, rds: RedisServer, _workers: tuple[str, str]) -> None:
        self._rds = rds
        self.port = free_port()
        self.process = start_bare(self.port, rds.url)
        wait_for_port(self.port)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def instance_pids(self) -> list[int]:
        return [self.process.pid]

    def kill_instance(self) -> None:
        raise NotImplementedError("steady scenario only")

    def restart_instance(self) -> None:
        raise NotImplementedError("steady scenario only")

    async def write(self, rate: float, seconds: float) -> tuple[Sent, int]:
        client = redis.Redis.from_url(self._rds.url)
        try:

            async def write(k: int) -> str:
                start, end, ids = booking_fields(k, "bench-provider")
                booking = booking_pb2.Booking(id=str(uuid.uuid4()), start_time=ts(start), end_time=ts(end))
                booking.customer_id, booking.provider_id, booking.service_id = ids.values()
                booking.create_time.CopyFrom(ts(datetime.now(UTC)))
                booking.update_time.CopyFrom(booking.create_time)
                booking.etag = "1"
                event = events_pb2.BookingEvent(
                    event_id=f"{k + 1}-{k + 1}", type=events_pb2.BOOKING_EVENT_TYPE_CREATED, booking=booking
                )
                event.actor.id, event.actor.name = "bench-writer", "bench-writer name"
                event.occur_time.CopyFrom(booking.create_time)
                payload = notify_pb2.SubscribeResponse(events=[event]).SerializeToString()
                await client.xadd(BASELINE_STREAM, {"response": payload}, maxlen=100_000)
                return f"{booking.id}/1"

            return await paced(rate, seconds, write)
        finally:
            await client.aclose()

    def stop(self) -> None:
        stop_bare(self.process)


# --- scenarios ---------------------------------------------------------------------------------------------


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


def measured(sent: Sent, failed: int, received: Received, subscribers: int, seconds: float, cpu: float | None) -> Run:
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
    )


def summary(runs: list[Run]) -> dict[str, Any]:
    """The figures of one or more runs of one system (rounds pooled)."""
    latencies = sorted(t for run in runs for t in run.latencies)
    writes = sorted(t for run in runs for t in run.writes)
    expected = sum(run.subscribers * run.changes for run in runs)
    received = sum(run.received for run in runs)
    result = {
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
    if all(run.cpu is not None for run in runs):
        cpu = sum(run.cpu or 0.0 for run in runs)
        result["cpu_us_per_delivery"] = round(cpu / max(len(latencies), 1) * 1e6, 1)
    return result


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
    clients = Subscribers(workdir, f"{system.mode}-{name}", system.mode, system.target, subscribers)
    try:
        await asyncio.to_thread(clients.wait_ready)
        await asyncio.sleep(1)  # the same pause for every system between its subscribers' start and the writes
        pids = system.instance_pids()
        cpu_before = cpu_seconds(pids)
        faulting = asyncio.create_task(fault()) if fault is not None else None
        sent, failed = await system.write(rate, seconds)
        if faulting is not None:
            await faulting
        await asyncio.sleep(SETTLE_SECONDS if fault is None else 3 * SETTLE_SECONDS)
        cpu = cpu_seconds(pids) - cpu_before if fault is None else None
        run = measured(sent, failed, await asyncio.to_thread(clients.finish), subscribers, seconds, cpu)
    except BaseException:
        clients.kill()
        raise
    brief = summary([run])
    progress(f"  p50 {brief['p50_ms']} ms, p99 {brief['p99_ms']} ms, lost {brief['lost']} of {brief['expected']}")
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


def hot_functions(out: Path, top: int = 25) -> list[str]:
    """The functions with the most samples on top of the stack (self time) in py-spy's collapsed stacks."""
    own: dict[str, int] = {}
    total = 0
    for path in out.glob("*.txt"):
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            frames = stack.split(";")
            total += int(count)
            own[frames[-1]] = own.get(frames[-1], 0) + int(count)
    ranked = sorted(own.items(), key=lambda item: -item[1])[:top]
    return [f"{100 * n / max(total, 1):5.1f}% {frame}" for frame, n in ranked]


async def compare(args: argparse.Namespace, workdir: Path, pg: PostgresServer, rds: RedisServer) -> dict[str, Any]:
    """Both systems run throughout (the idle one costs next to nothing) and take turns, scenario by scenario;
    the steady scenario alternates them over several rounds so that drift on a shared machine hits both."""
    systems: list[System] = []
    try:
        for make in (SocketIo, ThisProject):
            systems.append(make(workdir, pg, rds, (args.booking_workers, args.notify_workers)))
        floor = BareGrpc(workdir, pg, rds, ("", ""))
        systems.append(floor)
        runs: dict[str, dict[str, Any]] = {system.name: {"steady": []} for system in systems}
        for r in range(args.rounds):
            for system in systems:
                spies = []
                if args.profile and isinstance(system, ThisProject) and r == 0:
                    shutil.rmtree(OUT_DIR / "profile", ignore_errors=True)
                    pids = system.instance_pids()
                    spies = profile(pids[1:] or pids, args.seconds, OUT_DIR / "profile")
                run = await scenario(system, workdir, f"steady-{r}", args.subscribers, args.rate, args.seconds)
                runs[system.name]["steady"].append(run)
                for spy in spies:
                    spy.wait(60)
        results: dict[str, Any] = {name: {"steady": summary(r["steady"])} for name, r in runs.items()}
        if args.profile:
            results[ThisProject.name]["steady"]["profile_self_time"] = hot_functions(OUT_DIR / "profile")
        systems.remove(floor)
        floor.stop()
        if args.only_steady:
            return results
        for n in args.steps:
            for system in systems:
                run = await scenario(system, workdir, f"capacity-{n}", n, args.rate, args.step_seconds)
                results[system.name].setdefault("capacity", []).append(summary([run]))
        at = args.fault_seconds / 3
        for system in systems:
            fault = kill_instance_at(system, at)
            run = await scenario(
                system, workdir, "instance-killed", args.subscribers, args.rate, args.fault_seconds, fault
            )
            results[system.name]["instance_killed"] = summary([run])
        for system in systems:
            fault = restart_redis_at(rds, at)
            run = await scenario(
                system, workdir, "redis-restarted", args.subscribers, args.rate, args.fault_seconds, fault
            )
            results[system.name]["redis_restarted"] = summary([run])
        for key, (label, sick, well) in SICK_REDIS.items():
            for system in systems:
                fault = redis_sick_at(rds, at, label, sick, well)
                run = await scenario(system, workdir, key, args.subscribers, args.rate, args.fault_seconds, fault)
                results[system.name][key] = summary([run])
        for system in systems:  # its relay would otherwise keep the relay lock, and publish elsewhere
            system.stop()
        systems.clear()
        results[ThisProject.name]["sentinel_failover"] = await sentinel_failover(workdir, pg, args, at)
        return results
    finally:
        for system in systems:
            system.stop()


# --- report ------------------------------------------------------------------------------------------------


def held(steps: list[dict[str, Any]]) -> int:
    """The most deliveries/s of a step with p99 under HELD_P99_MS and nothing lost (0 if none)."""
    return max((s["deliveries_per_s"] for s in steps if s["p99_ms"] < HELD_P99_MS and s["lost"] == 0), default=0)


def targets(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, bool]:
    steady, reference = ours["steady"], theirs["steady"]
    return {
        "steady p50 <= Socket.IO's": steady["p50_ms"] <= reference["p50_ms"],
        "steady p99 <= Socket.IO's": steady["p99_ms"] <= reference["p99_ms"],
        "steady CPU per delivery <= Socket.IO's": steady["cpu_us_per_delivery"] <= reference["cpu_us_per_delivery"],
        "steady: 0 lost": steady["lost"] == 0,
        "capacity >= Socket.IO's": held(ours["capacity"]) >= held(theirs["capacity"]),
        "instance killed: 0 lost": ours["instance_killed"]["lost"] == 0,
        "Redis restarted: 0 lost": ours["redis_restarted"]["lost"] == 0,
        **{f"Redis {label}: 0 lost": ours[key]["lost"] == 0 for key, (label, _, _) in SICK_REDIS.items()},
        "Sentinel failover: 0 lost": ours["sentinel_failover"]["lost"] == 0,
    }


def table(ours: dict[str, Any], theirs: dict[str, Any], floor: dict[str, Any]) -> str:
    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}" if b else "-"

    rows: list[tuple[str, Any, Any, str]] = []
    for label, key in (
        ("p50 ms", "p50_ms"),
        ("p99 ms", "p99_ms"),
        ("max ms", "max_ms"),
        ("CPU us per delivery", "cpu_us_per_delivery"),
    ):
        a, b = ours["steady"][key], theirs["steady"][key]
        rows.append((f"steady: {label}", a, b, ratio(a, b)))
    rows.append(("steady: lost", ours["steady"]["lost"], theirs["steady"]["lost"], ""))
    bare = floor["steady"]
    rows.append(
        (
            "steady, bare grpc.aio fan-out: p50 | p99 | CPU us",
            f"{bare['p50_ms']} | {bare['p99_ms']} | {bare['cpu_us_per_delivery']}",
            "",
            "(the floor of any grpc.aio server)",
        )
    )
    for mine, ref in zip(ours["capacity"], theirs["capacity"], strict=True):
        rows.append(
            (
                f"{mine['subscribers']} subscribers: deliveries/s | p99 ms | lost",
                f"{mine['deliveries_per_s']} | {mine['p99_ms']} | {mine['lost']}",
                f"{ref['deliveries_per_s']} | {ref['p99_ms']} | {ref['lost']}",
                "",
            )
        )
    a, b = held(ours["capacity"]), held(theirs["capacity"])
    rows.append((f"capacity: deliveries/s held at p99 < {HELD_P99_MS:g} ms", a, b, ratio(a, b)))
    faults = [("instance SIGKILLed + restarted", "instance_killed"), ("Redis restarted", "redis_restarted")]
    faults += [(f"Redis {label} 10 s", key) for key, (label, _, _) in SICK_REDIS.items()]
    for label, key in faults:
        mine, ref = ours[key], theirs[key]
        rows.append(
            (
                f"{label}: lost of expected (writes failed)",
                f"{mine['lost']} of {mine['expected']} ({mine['writes_failed']})",
                f"{ref['lost']} of {ref['expected']} ({ref['lost'] / max(ref['expected'], 1):.1%})"
                f" ({ref['writes_failed']})",
                "",
            )
        )
        rows.append(
            (f"{label}: p99 | max ms", f"{mine['p99_ms']} | {mine['max_ms']}", f"{ref['p99_ms']} | {ref['max_ms']}", "")
        )
    mine = ours["sentinel_failover"]
    rows.append(
        (
            "Sentinel failover (primary SIGKILLed): lost of expected (writes failed)",
            f"{mine['lost']} of {mine['expected']} ({mine['writes_failed']})",
            "cannot follow one (one Redis URL)",
            "",
        )
    )
    rows.append(("Sentinel failover: p99 | max ms", f"{mine['p99_ms']} | {mine['max_ms']}", "", ""))
    widths = [max(len(str(row[i])) for row in rows) for i in range(4)]
    head = ("", "this project", "Socket.IO + Redis adapter", "ratio")
    widths = [max(w, len(h)) for w, h in zip(widths, head, strict=True)]
    lines = [" | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in [head, *rows]]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def chart(ours: dict[str, Any], theirs: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5))
    for name, steady in (("this project", ours["steady"]), ("Socket.IO + Redis adapter", theirs["steady"])):
        latencies = steady["_latencies"]
        if latencies:
            axes.plot(latencies, [(i + 1) / len(latencies) for i in range(len(latencies))], label=name)
    axes.set_xscale("log")
    axes.set_xlabel("latency from the write's send to receipt (ms, log scale)")
    axes.set_ylabel("fraction of deliveries")
    axes.set_title(f"steady: {ours['steady']['subscribers']} subscribers, {ours['steady']['changes']} changes")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)


def public(value: Any) -> Any:
    """`value` without the raw latencies (keys starting with _)."""
    if isinstance(value, dict):
        return {k: public(v) for k, v in value.items() if not k.startswith("_")}
    if isinstance(value, list):
        return [public(v) for v in value]
    return value


# --- idle memory -------------------------------------------------------------------------------------------


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


async def _bare_server(port: int, redis_url: str) -> None:
    """The baseline: NotifyService/Subscribe as bare as it gets: one XREAD loop writes each entry's ready-made
    response to every open stream; no auth, filters, queue bounds, history or gap checks."""
    queues: set[asyncio.Queue[bytes]] = set()

    async def subscribe(request: Any, context: Any) -> Any:
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        queues.add(queue)
        try:
            await context.send_initial_metadata(())
            while True:
                yield await queue.get()
        finally:
            queues.discard(queue)

    async def follow() -> None:
        client = redis.Redis.from_url(redis_url)
        newest: Any = await client.xrevrange(BASELINE_STREAM, count=1)
        position = newest[0][0] if newest else "0-0"
        while True:
            try:
                reply: Any = await client.xread({BASELINE_STREAM: position}, block=1000)
            except redis.RedisError as exc:  # the bench's Redis restarts: carry on when it is back
                print(f"bare fan-out server: {exc!r}", file=sys.stderr)
                await asyncio.sleep(0.1)
                continue
            for _key, entries in reply:
                for entry_id, fields in entries:
                    for queue in queues:
                        queue.put_nowait(fields[b"response"])
                    position = entry_id

    handler: grpc.RpcMethodHandler[Any, Any] = grpc.unary_stream_rpc_method_handler(subscribe)
    server = grpc.aio.server(options=[("grpc.keepalive_time_ms", 30_000)])
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("notify.v1.NotifyService", {"Subscribe": handler}),)
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    following = asyncio.create_task(follow())
    try:
        await server.wait_for_termination()
    finally:
        following.cancel()


def start_bare(port: int, redis_url: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.bench.bench_events", "bare", str(port), redis_url], cwd=PROJECT
    )


def stop_bare(process: subprocess.Popen[bytes]) -> None:
    process.kill()
    process.wait(30)


async def _idle_growth(address: str, pid: int, idle: int) -> float:
    """RSS growth of process `pid` per idle subscription, opened in steps from one client."""
    channels = [grpc.aio.insecure_channel(address) for _ in range(max(1, idle // 100))]
    calls = []
    try:
        # Warm up (first connections, first calls), then measure from there.
        for channel in channels:
            await channel.channel_ready()
        warm = [
            notify_pb2_grpc.NotifyServiceStub(channels[0]).Subscribe(
                notify_pb2.SubscribeRequest(), metadata=auth("user", f"idle-warm-{i}")
            )
            for i in range(50)
        ]
        for call in warm:
            await call.initial_metadata()
        await asyncio.sleep(1)
        before = _rss_bytes(pid)
        for i in range(idle):
            stub = notify_pb2_grpc.NotifyServiceStub(channels[i % len(channels)])
            calls.append(stub.Subscribe(notify_pb2.SubscribeRequest(), metadata=auth("user", f"idle-{i}")))
        for call in calls:
            await call.initial_metadata()
        await asyncio.sleep(2)
        after = _rss_bytes(pid)
        for call in [*warm, *calls]:
            call.cancel()
        return (after - before) / idle
    finally:
        for channel in channels:
            await channel.close()


async def bench_memory(args: argparse.Namespace, workdir: Path, rds: RedisServer) -> Any:
    # One process, whose memory is the subscriptions' (with workers, the pid would be their supervisor's).
    env = {"REDIS_URL": rds.url, "JWT_SECRET": JWT_SECRET, "EVENT_STREAM_KEY": STREAM, "WORKERS": "1"}
    notifier = ServiceProcess("notify_service", env, workdir)
    port = free_port()
    bare = start_bare(port, rds.url)
    try:
        notifier.start()
        wait_for_port(port)
        assert notifier.process is not None
        base = await _idle_growth(f"127.0.0.1:{port}", bare.pid, args.idle)
        svc = await _idle_growth(notifier.address, notifier.process.pid, args.idle)
        return {
            "benchmark": f"server memory per idle subscriber ({args.idle} subscriptions)",
            "baseline_bare_fanout_bytes": round(base),
            "service_bytes": round(svc),
            "ratio_service_to_baseline": round(svc / base, 2),
            "target": "<= 20480 bytes",
        }
    finally:
        notifier.stop()
        stop_bare(bare)


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    pg = PostgresServer(workdir / "postgres", durable=not args.no_fsync)
    rds = RedisServer(workdir / "redis", persist=True)  # as production runs it: a restart keeps the stream
    pg.start()
    rds.start()
    try:
        systems = await compare(args, workdir, pg, rds)
        if args.only_steady:
            return {"only_steady": public(systems)}
        progress("memory per idle subscriber")
        memory = await bench_memory(args, workdir, rds)
    finally:
        rds.stop()
        pg.stop("fast")
    ours, theirs = systems[ThisProject.name], systems[SocketIo.name]
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    chart(ours, theirs, OUT_DIR / "latency_cdf.png")
    result = {
        "benchmark": "realtime fan-out, this project against Socket.IO 4 + @socket.io/redis-adapter, one run",
        "rate_changes_per_s": args.rate,
        "systems": public(systems),
        "targets_met": targets(ours, theirs),
        "memory": memory,
        "table": table(ours, theirs, systems[BareGrpc.name]).splitlines(),
    }
    (OUT_DIR / "events.json").write_text(json.dumps(result, indent=2))
    return result


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "bare":
        asyncio.run(_bare_server(int(sys.argv[2]), sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each round of the steady scenario")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the steady scenario, systems alternating")
    parser.add_argument("--rate", type=float, default=100.0, help="changes per second")
    parser.add_argument("--subscribers", type=int, default=200)
    parser.add_argument("--steps", type=lambda text: [int(n) for n in text.split(",")], default=[200, 500, 1000, 2000])
    parser.add_argument("--step-seconds", type=float, default=8.0)
    parser.add_argument("--fault-seconds", type=float, default=24.0)
    parser.add_argument("--idle", type=int, default=2000)
    parser.add_argument("--no-fsync", action="store_true", help="run PostgreSQL without fsync")
    parser.add_argument("--booking-workers", default="", help="WORKERS of booking_service (default: its own)")
    parser.add_argument("--notify-workers", default="", help="WORKERS of notify_service (default: its own)")
    parser.add_argument("--only-steady", action="store_true", help="the steady scenario only (for quick work)")
    parser.add_argument("--profile", action="store_true", help="py-spy the notify workers during steady")
    args = parser.parse_args()
    result = run_in_workdir(run, args)
    if args.only_steady:
        print(json.dumps(result, indent=2))
        return
    print("\n".join(result["table"]))
    print()
    for name, met in result["targets_met"].items():
        print(f"{'met   ' if met else 'MISSED'} {name}")
    memory = result["memory"]
    print(
        f"memory per idle subscriber: {memory['service_bytes']} bytes (bare grpc.aio fan-out: "
        f"{memory['baseline_bare_fanout_bytes']}; ratio {memory['ratio_service_to_baseline']})"
    )
    print(f"written: {OUT_DIR / 'events.json'}, {OUT_DIR / 'latency_cdf.png'}")


if __name__ == "__main__":
    main()
