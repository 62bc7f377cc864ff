"""Realtime fan-out, side by side with the system it replaces, in one run.

    python -m tests.bench.bench_events [--seconds 10] [--rounds 3] [--rate 100] [--subscribers 200]
        [--steps 100,200,500,1000,2000] [--step-seconds 8] [--fault-seconds 24] [--idle 2000] [--no-fsync]
        [--booking-workers N] [--notify-workers N] [--only-steady] [--no-faults] [--no-profile] [--variant NAME:K=V,...]
        [--baseline PATH] [--decoding-processes 4] [--streams-per-connection 50]

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
  over the run, divided by the deliveries), lost, and how the kernel split the subscribers' connections over
  the instance's workers; for this project, each hop's p50 and p99 from its own histograms
  (tests/bench/fanout_hops.py), and py-spy's hottest functions of every process on the path in a round of its
  own, not counted (unless `--no-profile`); with `--variant` or `--baseline` (another checkout, such
  as main, to measure a change against), this project once more in each round, with its own database and stream;
  and (unless `--decoding-processes 0`) each system once more with subscribers that decode every message into
  objects (grpc-js + proto-loader; Socket.IO's client parses JSON anyway), spread over that many processes;
- capacity: subscribers on one instance rising through `steps` at `rate`, the bare floor included:
  deliveries/s, p99 and deliveries per CPU-second of the instance's processes at each step, and the most
  deliveries/s held with p99 under 100 ms and nothing lost; for this project also with notify's own part of
  the latency under 100 ms (its hops from the stream to the last write, the write path's left out: the bare
  floor's writer adds to the stream directly, so its whole latency is that part);
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
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import grpc
import uvloop

from booking_api.notify.v1 import notify_pb2, notify_pb2_grpc
from devtools.servers import PostgresServer, RedisServer, free_port, wait_for_port
from tests.bench.common import OUT_DIR, create_databases, progress, run_in_workdir
from tests.bench.fanout_hops import Hops, breakdown_lines, hot_functions_by_process, notify_p99_ms, steady_lines
from tests.bench.fanout_load import (
    SICK_REDIS,
    kill_instance_at,
    profile,
    redis_sick_at,
    restart_redis_at,
    scenario,
    sentinel_failover,
    summary,
)
from tests.bench.fanout_report import chart, decoding_of, public, table, targets
from tests.bench.fanout_systems import (
    STREAM,
    BareGrpc,
    Decoding,
    SocketIo,
    System,
    ThisProject,
    Variant,
    bare_server,
    start_bare,
    stop_bare,
)
from tests.support.helpers import JWT_SECRET, auth
from tests.support.servers import ServiceProcess


async def compare(args: argparse.Namespace, workdir: Path, pg: PostgresServer, rds: RedisServer) -> dict[str, Any]:
    """Both systems run throughout (the idle one costs next to nothing) and take turns, scenario by scenario;
    the steady scenario alternates them over several rounds so that drift on a shared machine hits both."""
    systems: list[System] = []
    try:
        workers = (args.booking_workers, args.notify_workers)
        for make in (SocketIo, ThisProject):
            systems.append(make(workdir, pg, rds, workers))
        ours = systems[-1]
        assert isinstance(ours, ThisProject)
        variants: list[System] = []
        if args.baseline is not None:
            args.variant.append(Variant("baseline", {}, args.baseline.resolve()))
        for variant in args.variant:  # steady only, beside the defaults
            await create_databases(pg.url, variant.database)
            variants.append(ThisProject(workdir, pg, rds, workers, variant))
        systems += variants
        floor = BareGrpc(workdir, pg, rds, ("", ""))
        systems.append(floor)
        decoding: list[System] = []
        if args.decoding_processes:  # each system's subscribers once more, decoding, spread over processes
            per_process = -(-args.subscribers // args.decoding_processes)
            decoding = [Decoding(system, per_process) for system in (systems[0], ours, floor)]
        systems += decoding
        runs: dict[str, dict[str, Any]] = {system.name: {"steady": []} for system in systems}
        hops = {system.name: Hops(system.metrics_ports) for system in systems if isinstance(system, ThisProject)}
        for r in range(args.rounds):
            for system in systems:
                if system.name in hops:
                    await asyncio.to_thread(hops[system.name].start)
                run = await scenario(system, workdir, f"steady-{r}", args.subscribers, args.rate, args.seconds)
                runs[system.name]["steady"].append(run)
                if system.name in hops:
                    await asyncio.to_thread(hops[system.name].stop)
        results: dict[str, Any] = {name: {"steady": summary(r["steady"])} for name, r in runs.items()}
        for name, counted in hops.items():
            results[name]["steady"]["hops"] = counted.summary()
        if not args.no_profile:
            results[ThisProject.name]["steady"]["profiles"] = await profiled_round(ours, workdir, args)
        for variant_system in [*variants, *decoding]:
            systems.remove(variant_system)
            variant_system.stop()
        systems.remove(floor)
        if args.only_steady:
            floor.stop()
            return results
        for n in args.steps:  # the floor too: deliveries per core-second against its own
            for system in [*systems, floor]:
                step_hops = Hops(system.metrics_ports) if isinstance(system, ThisProject) else None
                if step_hops is not None:
                    await asyncio.to_thread(step_hops.start)
                run = await scenario(system, workdir, f"capacity-{n}", n, args.rate, args.step_seconds)
                step = summary([run])
                if step_hops is not None:  # notify's own part of the latency, the write path's left out
                    await asyncio.to_thread(step_hops.stop)
                    step["notify_p99_ms"] = notify_p99_ms(step_hops.summary())
                results[system.name].setdefault("capacity", []).append(step)
        floor.stop()
        if args.no_faults:
            return results
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


# --- idle memory -------------------------------------------------------------------------------------------


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


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


async def profiled_round(system: ThisProject, workdir: Path, args: argparse.Namespace) -> dict[str, list[str]]:
    """One more steady round of this project with py-spy on every process of the path (not counted: py-spy slows
    what it samples); each process's hottest functions."""
    out = OUT_DIR / "profile"
    shutil.rmtree(out, ignore_errors=True)
    names = system.path_pids()
    spies = profile(list(names), args.seconds, out)
    await scenario(system, workdir, "steady-profiled", args.subscribers, args.rate, args.seconds)
    for spy in spies:
        await asyncio.to_thread(spy.wait, 60)
    return hot_functions_by_process(out, names)


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
        "targets_met": targets(ours, theirs, systems[BareGrpc.name], memory, decoding_of(systems)),
        "memory": memory,
        "table": table(ours, theirs, systems[BareGrpc.name], decoding_of(systems)).splitlines(),
    }
    (OUT_DIR / "events.json").write_text(json.dumps(result, indent=2))
    return result


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "bare":
        # On the event loop the services run on by default (EVENT_LOOP), so the floor is a floor for them.
        uvloop.run(bare_server(int(sys.argv[2]), sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each round of the steady scenario")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the steady scenario, systems alternating")
    parser.add_argument("--rate", type=float, default=100.0, help="changes per second")
    parser.add_argument("--subscribers", type=int, default=200)
    parser.add_argument(
        "--steps", type=lambda text: [int(n) for n in text.split(",")], default=[100, 200, 500, 1000, 2000]
    )
    parser.add_argument("--step-seconds", type=float, default=8.0)
    parser.add_argument("--fault-seconds", type=float, default=24.0)
    parser.add_argument("--idle", type=int, default=2000)
    parser.add_argument("--no-fsync", action="store_true", help="run PostgreSQL without fsync")
    parser.add_argument("--booking-workers", default="", help="WORKERS of booking_service (default: its own)")
    parser.add_argument("--notify-workers", default="", help="WORKERS of notify_service (default: its own)")
    parser.add_argument("--only-steady", action="store_true", help="the steady scenario only (for quick work)")
    parser.add_argument("--no-faults", action="store_true", help="steady, capacity and memory: no fault scenarios")
    parser.add_argument("--no-profile", action="store_true", help="no py-spy round after the steady scenario")
    parser.add_argument(
        "--variant",
        type=Variant.parse,
        action="append",
        default=[],
        help="NAME:KEY=VALUE,...: this project once more with these settings, in the steady rounds beside the "
        "defaults (repeatable)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another checkout of this project (main, say), made ready with `make install gen`: its services run "
        "beside these in the steady rounds, as 'this project [baseline]', to measure a change in one run",
    )
    parser.add_argument(
        "--decoding-processes",
        type=int,
        default=4,
        help="the steady scenario once more for each system with subscribers that decode every message, spread "
        "over this many Node.js processes (0: not)",
    )
    parser.add_argument(
        "--streams-per-connection",
        type=int,
        default=50,
        help="gRPC subscribers per HTTP/2 connection (200: all on one, as a gateway multiplexing its users)",
    )
    args = parser.parse_args()
    os.environ["BENCH_STREAMS_PER_CONNECTION"] = str(args.streams_per_connection)  # read by bench_client.mjs
    result = run_in_workdir(run, args)
    systems = result["only_steady"] if args.only_steady else result["systems"]
    breakdown = steady_lines(systems)
    for name, figures in systems.items():
        if "hops" in figures["steady"]:
            breakdown += breakdown_lines(name, figures["steady"]["hops"], figures["steady"].get("profiles", {}))
    if args.only_steady:
        print(json.dumps(result, indent=2))
        print("\n".join(breakdown))
        return
    print("\n".join(result["table"]))
    print()
    print("\n".join(breakdown))
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
