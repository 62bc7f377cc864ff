"""The systems `make bench` drives side by side: this project (booking_service and notify_service), the Node/Express
Socket.IO system it replaces (socketio_server.mjs with the Redis adapter), and a bare grpc.aio fan-out server
(the floor of CPU and memory per subscriber); each started and stopped, with the pids whose CPU counts."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import grpc
import httpx
import redis.asyncio as redis

from booking_api.booking.v1 import booking_pb2, booking_pb2_grpc, events_pb2
from booking_api.notify.v1 import notify_pb2
from devtools.servers import PostgresServer, RedisServer, SentinelGroup, children, free_port, wait_for_port
from tests.bench.common import open_loop, progress
from tests.bench.fanout_hops import process_names
from tests.support.helpers import JWT_SECRET, auth, ts
from tests.support.servers import PROJECT, ServiceProcess

BASELINE_STREAM = "bench:baseline"
STREAM = "bench:events"
EPOCH = datetime(2045, 1, 1, tzinfo=UTC)
NODE_DIR = PROJECT / ".local" / "bench-node"
BENCH = PROJECT / "tests" / "bench"
NODE_PACKAGES = {
    "@grpc/grpc-js": "1",
    "@grpc/proto-loader": "0",
    "socket.io": "4",
    "socket.io-client": "4",
    "@socket.io/redis-adapter": "8",
    "redis": "4",
    "pg": "8",
}
PER_PROCESS = 500  # subscribers per Node.js process
SETTLE_SECONDS = 3.0  # after the last write, for the last deliveries


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


# --- writers -----------------------------------------------------------------------------------------------

# change key -> (when its write was sent, when it returned), on CLOCK_MONOTONIC (time.monotonic()), the clock the
# Node.js subscribers stamp their receipts with (process.hrtime): the machine's wall clock can step mid-run.
Sent = dict[str, tuple[float, float]]


async def paced(rate: float, seconds: float, write: Callable[[int], Awaitable[str]]) -> tuple[Sent, int]:
    """Start `write(k)` `rate` times per second, whatever the writes before it are doing (open loop: a write
    held up by a fault does not hold up the next); returns each committed change's send and return times, and
    how many writes failed."""
    sent: Sent = {}
    failed: list[BaseException] = []

    async def timed(k: int) -> None:
        t0 = time.monotonic()
        try:
            key = await write(k)
        except (grpc.aio.AioRpcError, httpx.HTTPError) as exc:  # not committed: not expected either
            failed.append(exc)
        else:
            sent[key] = (t0, time.monotonic())

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


# --- the systems -------------------------------------------------------------------------------------------


class System(Protocol):
    name: str
    mode: str  # the subscriber client's mode
    per_process: int  # subscribers to a Node.js process

    @property
    def target(self) -> str: ...
    def instance_pids(self) -> list[int]: ...
    def kill_instance(self) -> None: ...
    def restart_instance(self) -> None: ...
    async def write(self, rate: float, seconds: float) -> tuple[Sent, int]: ...
    def stop(self) -> None: ...


class Decoding:
    """Another system with subscribers that decode every message (tests/bench/bench_client.mjs `grpc-decode`:
    grpc-js + proto-loader; Socket.IO's client parses each event's JSON anyway), `per_process` to a Node.js
    process, so that the clients' own decoding is not what holds the latency."""

    def __init__(self, system: System, per_process: int) -> None:
        self.system = system
        self.name = f"{system.name}, decoding client"
        self.mode = "grpc-decode" if system.mode == "grpc" else system.mode
        self.per_process = per_process

    @property
    def target(self) -> str:
        return self.system.target

    def instance_pids(self) -> list[int]:
        return self.system.instance_pids()

    def kill_instance(self) -> None:
        raise NotImplementedError("steady scenario only")

    def restart_instance(self) -> None:
        raise NotImplementedError("steady scenario only")

    async def write(self, rate: float, seconds: float) -> tuple[Sent, int]:
        return await self.system.write(rate, seconds)

    def stop(self) -> None:
        """The system it wraps is stopped by its owner."""


@dataclass(frozen=True)
class Variant:
    """This project once more, with settings of its own (`--variant NAME:KEY=VALUE,...`; `booking.KEY=VALUE` or
    `notify.KEY=VALUE` for one service only), or from another checkout (`--baseline PATH`: `tree`), to measure a
    change side by side with the defaults in the same run."""

    name: str
    env: dict[str, str]
    tree: Path = PROJECT  # the checkout whose services run

    def env_of(self, service: str) -> dict[str, str]:
        """The settings `service` ("booking" or "notify") gets."""
        mine = {}
        for key, value in self.env.items():
            scope, dot, name = key.partition(".")
            if not dot:
                mine[key] = value
            elif scope == service:
                mine[name] = value
        return mine

    @property
    def database(self) -> str:
        return f"bench_{self.name.replace('-', '_')}"

    @classmethod
    def parse(cls, text: str) -> Variant:
        name, _, settings = text.partition(":")
        if not name.replace("-", "").isalnum():
            raise ValueError(f"a variant's name is letters, digits and dashes: {name!r}")
        return cls(name, dict(item.split("=", 1) for item in settings.split(",") if item))


class ThisProject:
    name = "this project"
    mode = "grpc"
    per_process = PER_PROCESS

    def __init__(
        self,
        workdir: Path,
        pg: PostgresServer,
        rds: RedisServer | SentinelGroup,
        workers: tuple[str, str],
        variant: Variant | None = None,
    ) -> None:
        env = {"REDIS_URL": rds.url, "JWT_SECRET": JWT_SECRET, "EVENT_STREAM_KEY": STREAM, "DATABASE_URL": pg.url}
        booking_workers, notify_workers = ({"WORKERS": n} if n else {} for n in workers)
        if variant is not None:  # its own database and stream: its relay must not relay the other's events
            self.name = f"{ThisProject.name} [{variant.name}]"
            env |= {"DATABASE_URL": pg.url_for(variant.database), "EVENT_STREAM_KEY": f"{STREAM}:{variant.name}"}
            booking_workers |= variant.env_of("booking")
            notify_workers |= variant.env_of("notify")
        self.metrics_ports = [free_port(), free_port()]  # booking's and notify's /metrics (their hop histograms)
        booking_metrics, notify_metrics = ({"METRICS_LISTEN": f"127.0.0.1:{port}"} for port in self.metrics_ports)
        tree = PROJECT if variant is None else variant.tree
        self.booking = ServiceProcess(
            "booking_service", {**env, **booking_workers, **booking_metrics}, workdir, project=tree
        )
        # DATABASE_URL: while Redis is down, notify follows the outbox (notify_service.fallback).
        self.notify = ServiceProcess(
            "notify_service", {**env, **notify_workers, **notify_metrics}, workdir, project=tree
        )
        self.booking.start()
        self.notify.start()

    @property
    def target(self) -> str:
        return self.notify.address

    def instance_pids(self) -> list[int]:
        assert self.notify.process is not None
        return [self.notify.process.pid, *children(self.notify.process.pid)]

    def path_pids(self) -> dict[int, str]:
        """Every process a change goes through, named: booking's (the relay among its workers) and notify's."""
        assert self.booking.process is not None and self.notify.process is not None
        return process_names("booking", self.booking.process.pid) | process_names("notify", self.notify.process.pid)

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
    per_process = PER_PROCESS

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
    to every open stream; no auth, filters, bounds, history, PostgreSQL or relay; one process, on uvloop as the
    services are by default), fed by XADDs of
    a response like this project's. Steady scenario only: it shows what any grpc.aio fan-out costs."""

    name = "bare grpc.aio fan-out"
    mode = "grpc"
    per_process = PER_PROCESS

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


# --- a bare grpc.aio fan-out server: the floor ----------------------------------------------------------


async def bare_server(port: int, redis_url: str) -> None:
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
