"""Event-path benchmarks, each against a baseline run side by side in the same run.

    python -m tests.bench.bench_events [--seconds 10] [--rate 100] [--subscribers 200] [--idle 2000]

1. Latency: changes are written through booking_service at `rate` per second (alternating CreateBooking and
   DeleteBooking) while `subscribers` streams, split over two notify_service instances, receive them. Latency is
   measured per event and subscriber, from the moment the write was sent and from the moment it returned (the
   commit lies in between), to receipt. Baseline, same load and clients: a bare fan-out server (one Redis XREAD
   loop writing each entry to every open stream; no auth, filters, bounds, history, PostgreSQL or relay) fed
   by XADDs at the same rate. Every subscriber must get every change.
   The subscribers are Node.js processes (@grpc/grpc-js, installed under .local/bench-node on first use), which
   cost a fraction of a Python client per message: on two cores, Python clients would measure themselves.
2. Idle subscriber memory: a server's RSS growth per idle subscription, over `idle` subscriptions; the bare
   fan-out server is the baseline.

Targets: latency p50 <= 3 ms and p99 <= 10 ms at 100 changes/s with 200 subscribers; <= 20 KB per idle subscriber.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import redis.asyncio as redis

from booking_api.booking.v1 import booking_pb2, booking_pb2_grpc, events_pb2
from booking_api.notify.v1 import notify_pb2, notify_pb2_grpc
from svc_common.dev.servers import PostgresServer, RedisServer, free_port, wait_for_port
from tests.support.helpers import JWT_SECRET, auth, token, ts
from tests.support.servers import PROJECT, ServiceProcess, run_benchmark

BASELINE_STREAM = "bench:baseline"
STREAM = "bench:events"
EPOCH = datetime(2045, 1, 1, tzinfo=UTC)
NODE_DIR = PROJECT / ".local" / "bench-node"


# --- subscribers -------------------------------------------------------------------------------------------


def node_modules() -> Path:
    """@grpc/grpc-js for the Node.js subscriber processes, installed on first use."""
    modules = NODE_DIR / "node_modules"
    if not (modules / "@grpc" / "grpc-js").exists():
        npm = shutil.which("npm")
        if npm is None or shutil.which("node") is None:
            raise SystemExit("bench_events needs Node.js and npm for its subscriber processes (apt-get install npm)")
        NODE_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [npm, "install", "--silent", "--no-audit", "--no-fund", "--prefix", str(NODE_DIR), "@grpc/grpc-js@1"],
            check=True,
        )
    return modules


class Clients:
    """Node.js subscriber processes, `per_process` streams each, started and stopped together."""

    def __init__(self, workdir: Path, name: str, targets: list[str], per_process: int) -> None:
        self.outs = [str(workdir / f"{name}-{n}.json") for n in range(len(targets))]
        env = {**os.environ, "BENCH_NODE_MODULES": str(node_modules())}
        bearer = token("admin", "bench-subscriber")
        self.processes = [
            subprocess.Popen(
                ["node", str(PROJECT / "tests" / "bench" / "bench_client.mjs"), target, str(per_process), out, bearer],
                cwd=PROJECT,
                env=env,
            )
            for target, out in zip(targets, self.outs, strict=True)
        ]

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 120
        while not all(Path(out + ".ready").exists() for out in self.outs):
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.processes):
                raise RuntimeError("subscriber processes did not get ready")
            time.sleep(0.1)

    def finish(self) -> list[tuple[int, str, float]]:
        """Every event received: (stream, "<booking id>/<event type>", receipt time of its response, seconds)."""
        records: list[tuple[int, str, float]] = []
        for n, (process, out) in enumerate(zip(self.processes, self.outs, strict=True)):
            process.send_signal(signal.SIGTERM)
            process.wait(60)
            for i, received_ms, data in json.loads(Path(out).read_text()):
                for event in notify_pb2.SubscribeResponse.FromString(base64.b64decode(data)).events:
                    records.append((n * 100_000 + i, f"{event.booking.id}/{event.type}", received_ms / 1000))
        return records


# --- writers -----------------------------------------------------------------------------------------------


async def _paced(rate: float, seconds: float, write: Any) -> dict[str, tuple[float, float]]:
    """Call `write(k)` `rate` times per second; returns each change's key -> (sent, returned) wall times."""
    sent: dict[str, tuple[float, float]] = {}
    start = time.perf_counter()
    for k in range(int(rate * seconds)):
        delay = start + k / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        t0 = time.time()
        key = await write(k)
        sent[key] = (t0, time.time())
    return sent


async def write_bookings(address: str, rate: float, seconds: float) -> dict[str, tuple[float, float]]:
    metadata = auth("admin", "bench-writer")
    async with grpc.aio.insecure_channel(address) as channel:
        stub = booking_pb2_grpc.BookingServiceStub(channel)
        last: list[str] = []

        async def write(k: int) -> str:
            if k % 2 == 0:
                start = EPOCH + timedelta(hours=k)
                booking = booking_pb2.Booking(
                    customer_id="bench-customer",
                    provider_id="bench-provider",
                    service_id="svc",
                    start_time=ts(start),
                    end_time=ts(start + timedelta(minutes=30)),
                )
                created = await stub.CreateBooking(booking_pb2.CreateBookingRequest(booking=booking), metadata=metadata)
                last[:] = [created.booking.id]
                return f"{created.booking.id}/1"
            await stub.DeleteBooking(
                booking_pb2.DeleteBookingRequest(booking_id=last[0], reason="bench"), metadata=metadata
            )
            return f"{last[0]}/2"

        return await _paced(rate, seconds, write)


async def write_redis(url: str, rate: float, seconds: float) -> dict[str, tuple[float, float]]:
    """The baseline's changes: each an XADD of a ready-made response, keyed like a booking's creation."""
    client = redis.Redis.from_url(url)
    try:

        async def write(k: int) -> str:
            event = events_pb2.BookingEvent(
                booking=booking_pb2.Booking(id=str(k)), type=events_pb2.BOOKING_EVENT_TYPE_CREATED
            )
            payload = notify_pb2.SubscribeResponse(events=[event]).SerializeToString()
            await client.xadd(BASELINE_STREAM, {"response": payload}, maxlen=100_000)
            return f"{k}/1"

        return await _paced(rate, seconds, write)
    finally:
        await client.aclose()


def latency_report(
    sent: dict[str, tuple[float, float]], records: list[tuple[int, str, float]], subscribers: int
) -> dict[str, Any]:
    got: dict[int, list[str]] = defaultdict(list)
    from_sent, from_returned = [], []
    for stream, key, received in records:
        got[stream].append(key)
        if key in sent:
            from_sent.append((received - sent[key][0]) * 1000)
            from_returned.append((received - sent[key][1]) * 1000)
    complete = sum(1 for keys in got.values() if sorted(keys) == sorted(sent))

    def pct(values: list[float], q: float) -> float:
        return round(statistics.quantiles(values, n=1000)[int(q * 1000) - 1], 2)

    return {
        "changes": len(sent),
        "subscribers_with_every_change_once": f"{complete}/{subscribers}",
        "p50_ms_from_sent": pct(from_sent, 0.5),
        "p99_ms_from_sent": pct(from_sent, 0.99),
        "p50_ms_from_returned": pct(from_returned, 0.5),
        "p99_ms_from_returned": pct(from_returned, 0.99),
        "max_ms_from_sent": round(max(from_sent), 2),
    }


async def bench_latency(args: argparse.Namespace, workdir: Path, pg: PostgresServer, rds: RedisServer) -> Any:
    env = {"REDIS_URL": rds.url, "JWT_SECRET": JWT_SECRET, "EVENT_STREAM_KEY": STREAM}
    booking = ServiceProcess("booking_service", {**env, "DATABASE_URL": pg.url}, workdir)
    notifiers = [ServiceProcess("notify_service", env, workdir) for _ in range(2)]
    bare_ports = [free_port(), free_port()]
    bare = [start_bare(port, rds.url) for port in bare_ports]
    started = [booking, *notifiers]
    try:
        for process in started:
            process.start()
        for port in bare_ports:
            wait_for_port(port)
        half = args.subscribers // 2
        results = {}
        for mode in ("baseline", "service"):
            if mode == "baseline":
                clients = Clients(workdir, mode, [f"127.0.0.1:{port}" for port in bare_ports], half)
            else:
                clients = Clients(workdir, mode, [n.address for n in notifiers], half)
            clients.wait_ready()
            if mode == "baseline":
                sent = await write_redis(rds.url, args.rate, args.seconds)
            else:
                sent = await write_bookings(booking.address, args.rate, args.seconds)
            await asyncio.sleep(2)  # let the last events arrive
            results[mode] = latency_report(sent, clients.finish(), 2 * half)
        base, svc = results["baseline"], results["service"]
        return {
            "benchmark": f"event latency at {args.rate:g} changes/s, {2 * half} subscribers on 2 server instances",
            "baseline_bare_fanout": base,
            "service": svc,
            "ratio_p50_service_from_returned_to_baseline": round(
                svc["p50_ms_from_returned"] / base["p50_ms_from_returned"], 2
            ),
            "ratio_p99_service_from_returned_to_baseline": round(
                svc["p99_ms_from_returned"] / base["p99_ms_from_returned"], 2
            ),
            "target": "p50 <= 3 ms, p99 <= 10 ms, every subscriber gets every change",
        }
    finally:
        for process in started:
            process.stop()
        for server in bare:
            stop_bare(server)


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
        position = "$"
        while True:
            reply: Any = await client.xread({BASELINE_STREAM: position}, block=0)
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


async def run(args: argparse.Namespace, workdir: Path) -> list[Any]:
    pg = PostgresServer(workdir / "postgres", durable=not args.no_fsync)
    rds = RedisServer(workdir / "redis")
    pg.start()
    rds.start()
    try:
        return [await bench_latency(args, workdir, pg, rds), await bench_memory(args, workdir, rds)]
    finally:
        rds.stop()
        pg.stop("fast")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "bare":
        asyncio.run(_bare_server(int(sys.argv[2]), sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--subscribers", type=int, default=200)
    parser.add_argument("--idle", type=int, default=2000)
    parser.add_argument("--no-fsync", action="store_true", help="run PostgreSQL without fsync")
    run_benchmark(run, parser.parse_args())


if __name__ == "__main__":
    main()
