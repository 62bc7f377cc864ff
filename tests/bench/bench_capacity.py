"""Ceilings, each against its floor, in one run: where the write path and the relay stop.

    python -m tests.bench.bench_capacity [--rounds 3] [--seconds 6] [--concurrency 32]
        [--relay-rates 1000,2500,5000,10000,15000,20000,30000] [--relay-seconds 5] [--batch 50]
        [--dispatch-subscribers 10000] [--reader-rates 200,1000,5000] [--reader-seconds 10]
        [--only writes|relay|dispatch|readers]

1. Writes per booking worker at saturation: CreateBooking, then UpdateBooking (a reschedule), each called in
   `concurrency` closed loops for `seconds`, against two floors running the same statements on a pool of the
   same size (10), on their own databases of one private PostgreSQL server, all taking turns in each of
   `rounds` rounds:
   - the floor of any gRPC design: a bare grpc.aio server (tests/bench/bare_booking.py, one process on uvloop:
     the statements, the answer, nothing else), called by the same client;
   - raw asyncpg running the statements from the bench process.
   The service runs one booking worker (`WORKERS=1`, on uvloop by default) with its relay publishing every
   change to Redis, as a worker does; and once more with the relay in another process that takes no calls (an
   instance started first on the same database holds the relay's lock). Calls/s, the ratio to each floor
   (target: >= 0.7x the bare grpc.aio floor), and CPU per call of the server's processes and of PostgreSQL.
2. The relay: outbox rows inserted directly (a booking's CREATED event as CreateBooking's statement leaves
   it), `batch` rows per INSERT, then the NOTIFY a writer sends after its commit), open loop at rising rates for
   `relay-seconds` each, the service's relay (one booking worker taking no calls) placing and publishing them;
   a reader in the bench process follows the stream (XREAD BLOCK). Each step: events/s inserted and published,
   outbox-to-stream lag (an INSERT's commit returning to the entry's read) p50/p99, the relay worker's CPU per
   event. The ceiling is the highest step with every event published and lag p99 < 100 ms (target: >= 10,000
   events/s). The floor: the same PostgreSQL doing only the inserts, as fast as the same inserter goes (closed
   loop, the same batches and connections), on a database no relay reads, measured before and after the steps.
3. Notify's dispatch (in-process, no servers): what one event costs a notify worker per subscriber it holds,
   for streams it is not for and for streams that all take it, against a bare loop (bench_dispatch).
4. Notify's stream readers: what each worker's own read of the stream costs per event (an instance of two
   workers, no subscriber; the relay placing events from outbox rows inserted at `reader-rates`), against the
   floor of one reader per instance handing each entry to its workers (tests/bench/reader_floor.py): the most
   that design could save (bench_readers).

Results: a table on the terminal and .local/bench/capacity.json. The client and PostgreSQL share the machine's
cores with the servers, as in the other benchmarks: read the ratios, not the absolute figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import redis.asyncio as redis

from booking_api.booking.v1 import booking_pb2, booking_pb2_grpc
from booking_service.sql import BOOKING_WITH_SCHEDULE_SQL, CREATE_SQL, SCHEDULE_SQL, UPDATE_SQL
from devtools.servers import PostgresServer, RedisServer, children, free_port, wait_for_port
from svc_common import eventstream
from tests.bench.bench_write_path import POOL_SIZE, _migrate, closed_loops, raw_pool, service_env
from tests.bench.common import OUT_DIR, create_databases, progress, run_in_workdir, write_result
from tests.bench.fanout_hops import Hops
from tests.bench.fanout_load import cpu_seconds
from tests.support.events import eventually
from tests.support.helpers import JWT_SECRET, auth, ts
from tests.support.servers import PROJECT, ServiceProcess

EPOCH = datetime(2045, 1, 1, tzinfo=UTC)
LAG_TARGET_MS = 100.0
SERVICE, SERVICE_APART = "service (1 worker)", "service (1 worker), relay in another process"
INSERTERS = 4  # connections inserting outbox rows
CHANNEL = "booking_outbox"  # what a booking instance NOTIFYs after its commit (booking_service.outbox.CHANNEL)

# --- writes -------------------------------------------------------------------------------------------------


def _slot(i: int) -> tuple[datetime, datetime]:
    start = EPOCH + timedelta(hours=i)
    return start, start + timedelta(minutes=30)


class RawSide:
    """The statements from the bench process, through a pool configured as the service's."""

    name = "raw asyncpg"

    def __init__(self, pool: asyncpg.Pool[asyncpg.Record]) -> None:
        self.pool = pool

    def pids(self) -> list[int]:
        return [os.getpid()]  # the client is the only process: its CPU is what raw asyncpg costs

    async def create(self, provider: str, i: int) -> str:
        start, end = _slot(i)
        async with self.pool.acquire() as conn:
            await conn.fetchrow(SCHEDULE_SQL, provider)
            record = await conn.fetchrow(
                CREATE_SQL, uuid.uuid4(), "customer", provider, "svc", start, end, "", "bench", None, uuid.uuid4(),
                "Bench", "admin", None, "", timedelta(0), timedelta(0),
            )  # fmt: skip
        assert record is not None and record["id"] is not None
        return str(record["id"])

    async def update(self, booking_id: str, i: int) -> None:
        start, end = _slot(i)
        async with self.pool.acquire() as conn:
            await conn.fetchrow(BOOKING_WITH_SCHEDULE_SQL, uuid.UUID(booking_id))
            record = await conn.fetchrow(
                UPDATE_SQL, uuid.UUID(booking_id), start, end, None, None, None, None, None, uuid.uuid4(), "bench",
                "Bench", "admin", ["start_time", "end_time"], None, None, None, "",
            )  # fmt: skip
        assert record is not None and record["id"] is not None


class GrpcSide:
    """A BookingService on `address` (the service, or the bare floor), called over one channel."""

    def __init__(self, name: str, address: str, pids: Callable[[], list[int]]) -> None:
        self.name = name
        self.pids = pids
        self.channel = grpc.aio.insecure_channel(address)
        self.stub: booking_pb2_grpc.BookingServiceAsyncStub = booking_pb2_grpc.BookingServiceStub(self.channel)
        self.metadata = auth("admin", "bench")

    async def create(self, provider: str, i: int) -> str:
        start, end = _slot(i)
        booking = booking_pb2.Booking(
            customer_id="customer", provider_id=provider, service_id="svc", start_time=ts(start), end_time=ts(end)
        )
        response = await self.stub.CreateBooking(
            booking_pb2.CreateBookingRequest(booking=booking), metadata=self.metadata
        )
        return str(response.booking.id)

    async def update(self, booking_id: str, i: int) -> None:
        start, end = _slot(i)
        request = booking_pb2.UpdateBookingRequest(
            booking=booking_pb2.Booking(id=booking_id, start_time=ts(start), end_time=ts(end))
        )
        request.update_mask.paths.extend(["start_time", "end_time"])
        await self.stub.UpdateBooking(request, metadata=self.metadata)


Side = RawSide | GrpcSide


async def saturate(
    side: Side, op: str, concurrency: int, seconds: float, tag: str, pg_pids: list[int]
) -> dict[str, Any]:
    """One side's calls/s of `op` at saturation, and CPU per call of its processes and of PostgreSQL."""

    async def calls(phase: str) -> Callable[[int, int], Awaitable[None]]:
        if op == "create":

            async def create(loop: int, i: int) -> None:
                await side.create(f"{tag}{phase}-p{loop}", i)

            return create
        # each loop moves a booking of its own, so that the loops never contend for a slot
        owned = [await side.create(f"{tag}{phase}-p{loop}", 0) for loop in range(concurrency)]

        async def update(loop: int, i: int) -> None:
            await side.update(owned[loop], i + 1)

        return update

    await closed_loops(concurrency, 0.5, await calls("warm"))  # connections, prepared statements
    call = await calls("")
    pids = side.pids()
    server_before, pg_before = cpu_seconds(pids), cpu_seconds(pg_pids)
    started = time.perf_counter()
    rate = await closed_loops(concurrency, seconds, call)
    made = rate * (time.perf_counter() - started)
    return {
        "calls_per_s": round(rate, 1),
        "server_cpu_us_per_call": round((cpu_seconds(pids) - server_before) / made * 1e6, 1),
        "postgres_cpu_us_per_call": round((cpu_seconds(pg_pids) - pg_before) / made * 1e6, 1),
    }


def postgres_pids(pg: PostgresServer) -> list[int]:
    postmaster = int((pg.data_dir / "postmaster.pid").read_text().split()[0])
    return [postmaster, *children(postmaster)]


def start_bare(port: int, dsn: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "tests.bench.bare_booking", str(port), dsn, str(POOL_SIZE)],
                            cwd=PROJECT)  # fmt: skip


async def bench_writes(args: argparse.Namespace, workdir: Path, pg: PostgresServer, rds: RedisServer) -> dict[str, Any]:
    await create_databases(pg.url, "w_raw", "w_bare", "w_svc", "w_apart")
    await _migrate(pg.url_for("w_raw"))
    await _migrate(pg.url_for("w_bare"))
    service = ServiceProcess("booking_service", service_env(pg.url_for("w_svc"), rds.url) | {"WORKERS": "1"}, workdir)
    service.start()
    # The relay in a process that takes no calls: an instance started first takes the relay's lock on its
    # database; the measured one, started after it, stands by and wakes it after its commits (NOTIFY).
    apart_env = service_env(pg.url_for("w_apart"), rds.url) | {"WORKERS": "1", "EVENT_STREAM_KEY": "bench:apart"}
    relaying = ServiceProcess("booking_service", apart_env, workdir)
    relaying.start()
    apart = ServiceProcess("booking_service", apart_env, workdir)
    apart.start()
    bare_port = free_port()
    bare = start_bare(bare_port, pg.url_for("w_bare"))
    pool = await raw_pool(pg.url_for("w_raw"))
    sides: list[Side] = []
    try:
        wait_for_port(bare_port)

        def pids_of(instance: ServiceProcess) -> Callable[[], list[int]]:
            def pids() -> list[int]:
                assert instance.process is not None
                return [instance.process.pid, *children(instance.process.pid)]

            return pids

        sides = [
            RawSide(pool),
            GrpcSide("bare grpc.aio", f"127.0.0.1:{bare_port}", lambda: [bare.pid]),
            GrpcSide(SERVICE, service.address, pids_of(service)),
            GrpcSide(SERVICE_APART, apart.address, pids_of(apart)),
        ]
        pg_pids = postgres_pids(pg)
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {
            op: {s.name: [] for s in sides} for op in ("create", "update")
        }
        for r in range(args.rounds):
            for op in ("create", "update"):
                progress(f"writes, round {r + 1} of {args.rounds}: {op} at saturation, {args.concurrency} loops")
                for side in sides:
                    run = await saturate(side, op, args.concurrency, args.seconds, f"{op}{r}", pg_pids)
                    runs[op][side.name].append(run)
                    progress(f"  {side.name}: {run['calls_per_s']:g}/s")
        return {op: _write_summary(by_side) for op, by_side in runs.items()}
    finally:
        for side in sides:
            if isinstance(side, GrpcSide):
                await side.channel.close()
        await pool.close()
        bare.kill()
        bare.wait(30)
        for instance in (service, apart, relaying):
            instance.stop()


def _write_summary(by_side: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Medians over the rounds, each side's calls/s as a ratio to each floor's in the same round."""
    raw, bare, svc, apart = (by_side[name] for name in ("raw asyncpg", "bare grpc.aio", SERVICE, SERVICE_APART))
    out: dict[str, Any] = {}
    for name, runs in by_side.items():
        out[name] = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        out[name]["calls_per_s_rounds"] = [run["calls_per_s"] for run in runs]
    ratios_bare = [s["calls_per_s"] / b["calls_per_s"] for s, b in zip(svc, bare, strict=True)]
    ratios_raw = [s["calls_per_s"] / r["calls_per_s"] for s, r in zip(svc, raw, strict=True)]
    bare_to_raw = [b["calls_per_s"] / r["calls_per_s"] for b, r in zip(bare, raw, strict=True)]
    out["service_to_bare"] = {"median": round(statistics.median(ratios_bare), 3), "rounds": _rounded(ratios_bare)}
    out["service_to_raw"] = {"median": round(statistics.median(ratios_raw), 3), "rounds": _rounded(ratios_raw)}
    out["bare_to_raw"] = {"median": round(statistics.median(bare_to_raw), 3), "rounds": _rounded(bare_to_raw)}
    apart_to_bare = [a["calls_per_s"] / b["calls_per_s"] for a, b in zip(apart, bare, strict=True)]
    out["apart_to_bare"] = {"median": round(statistics.median(apart_to_bare), 3), "rounds": _rounded(apart_to_bare)}
    out["target_met"] = out["service_to_bare"]["median"] >= 0.7
    return out


def _rounded(values: list[float]) -> list[float]:
    return [round(v, 3) for v in values]


# --- the relay ----------------------------------------------------------------------------------------------

INSERT_SQL = """
INSERT INTO booking_outbox (event_type, booking, actor_id, actor_name, actor_role)
SELECT 'CREATED', jsonb_set($1::jsonb, '{id}', to_jsonb(i)), 'bench', 'Bench', 'admin' FROM unnest($2::text[]) AS i
"""


async def template_event(dsn: str) -> str:
    """A CREATED event's booking, as CreateBooking's statement writes it into the outbox (its id replaced per row)."""
    conn = await asyncpg.connect(dsn)
    try:
        start, end = _slot(0)
        await conn.fetchrow(
            CREATE_SQL, uuid.uuid4(), "customer-0042", "provider-0007", "haircut", start, end, "window seat, please",
            "bench", None, uuid.uuid4(), "Bench", "admin", None, "", timedelta(0), timedelta(0),
        )  # fmt: skip
        booking: str = await conn.fetchval("SELECT booking::text FROM booking_outbox ORDER BY id DESC LIMIT 1")
        await conn.execute("DELETE FROM booking_outbox")  # not one the relay should see twice
        return booking
    finally:
        await conn.close()


class Inserter:
    """Outbox rows `batch` to an INSERT, then a NOTIFY as a writer sends after its commit, on INSERTERS connections."""

    def __init__(self, pool: asyncpg.Pool[asyncpg.Record], template: str, batch: int) -> None:
        self.pool, self.template, self.batch = pool, template, batch
        self.committed: dict[str, float] = {}  # id -> when its INSERT's commit returned (time.monotonic())

    async def insert(self, ids: list[str]) -> None:
        async with self.pool.acquire() as conn:
            await conn.execute(INSERT_SQL, self.template, ids)
            at = time.monotonic()
            await conn.execute(f"NOTIFY {CHANNEL}")
        for one in ids:
            self.committed[one] = at

    async def flat_out(self, seconds: float, tag: str) -> float:
        """As fast as it goes (closed loop on every connection): rows/s."""
        done = 0
        deadline = time.perf_counter() + seconds

        async def loop(worker: int) -> None:
            nonlocal done
            k = 0
            while time.perf_counter() < deadline:
                await self.insert([f"{tag}-{worker}-{k}-{n}" for n in range(self.batch)])
                k += 1
                done += self.batch

        started = time.perf_counter()
        await asyncio.gather(*(loop(w) for w in range(INSERTERS)))
        return done / (time.perf_counter() - started)

    async def paced(self, rate: float, seconds: float, tag: str) -> tuple[int, float]:
        """`rate` rows/s for `seconds` (open loop, one INSERT every batch/rate s); rows inserted, rows/s achieved."""
        interval = self.batch / rate
        tasks = []
        started = time.perf_counter()
        for k in range(int(seconds / interval)):
            delay = started + k * interval - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(self.insert([f"{tag}-{k}-{n}" for n in range(self.batch)])))
        await asyncio.gather(*tasks)
        return len(tasks) * self.batch, len(tasks) * self.batch / (time.perf_counter() - started)


class StreamReader:
    """Follows the stream from its end, noting when each entry's booking id was read."""

    def __init__(self, url: str, key: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.key = key
        self.read: dict[str, float] = {}
        self.task: asyncio.Task[None] | None = None
        self.wanted = 0  # how many entries `all_read` waits for
        self.all_in = asyncio.Event()
        self.stopping = False

    def expect(self, count: int) -> None:
        """Start counting afresh, towards `count` entries."""
        self.read.clear()
        self.wanted = count
        self.all_in.clear()

    async def all_read(self) -> None:
        """Until the entries expected are read."""
        await self.all_in.wait()

    async def start(self) -> None:
        newest: Any = await self.client.xrevrange(self.key, count=1)
        self.task = asyncio.create_task(self._follow(newest[0][0] if newest else "0-0"))

    async def _follow(self, position: Any) -> None:
        while not self.stopping:
            reply: Any = await self.client.xread({self.key: position}, block=1000, count=10_000)
            now = time.monotonic()
            for _key, entries in reply or ():
                for entry_id, fields in entries:
                    booking = fields.get(eventstream.FIELD_BOOKING)
                    if booking is not None:
                        self.read[booking.decode()] = now
                    position = entry_id
            if len(self.read) >= self.wanted:
                self.all_in.set()

    async def stop(self) -> None:
        # The flag as well as the cancellation: a cancellation that lands inside redis-py's blocking read can be
        # taken for the read's own (the loop then went on reading; seen with the notify workers beside it).
        self.stopping = True
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await self.client.aclose()


async def relay_step(
    inserter: Inserter, reader: StreamReader, rate: float, seconds: float, tag: str, relay_pids: list[int]
) -> dict[str, Any]:
    inserter.committed.clear()
    reader.expect(int(seconds / (inserter.batch / rate)) * inserter.batch)  # what `paced` inserts
    cpu_before = cpu_seconds(relay_pids)
    inserted, achieved = await inserter.paced(rate, seconds, tag)
    with contextlib.suppress(TimeoutError):  # what is not read by then counts as not published
        async with asyncio.timeout(10):
            await reader.all_read()
    cpu = cpu_seconds(relay_pids) - cpu_before
    lags = sorted((reader.read[k] - at) * 1000 for k, at in inserter.committed.items() if k in reader.read)
    published = len(lags)
    p99 = lags[min(len(lags) - 1, int(0.99 * len(lags)))] if lags else float("inf")
    return {
        "rate_per_s": rate,
        "inserted_per_s": round(achieved),
        "inserted": inserted,
        "published": published,
        "lag_p50_ms": round(lags[len(lags) // 2], 2) if lags else None,
        "lag_p99_ms": round(p99, 2),
        "relay_cpu_us_per_event": round(cpu / max(published, 1) * 1e6, 1),
        "held": published == inserted and p99 < LAG_TARGET_MS and achieved >= 0.95 * rate,
    }


async def bench_relay(args: argparse.Namespace, workdir: Path, pg: PostgresServer, rds: RedisServer) -> dict[str, Any]:
    await create_databases(pg.url, "r_relay", "r_floor")
    await _migrate(pg.url_for("r_floor"))
    metrics_port = free_port()  # the relay's hop histograms
    env = service_env(pg.url_for("r_relay"), rds.url) | {"WORKERS": "1", "METRICS_LISTEN": f"127.0.0.1:{metrics_port}"}
    service = ServiceProcess("booking_service", env, workdir)
    service.start()  # migrates r_relay and takes the relay lock
    template = await template_event(pg.url_for("r_floor"))
    pools = {
        name: await asyncpg.create_pool(pg.url_for(name), min_size=INSERTERS, max_size=INSERTERS)
        for name in ("r_relay", "r_floor")
    }
    reader = StreamReader(rds.url, eventstream.DEFAULT_STREAM_KEY)
    try:
        assert service.process is not None
        relay_pids = [service.process.pid, *children(service.process.pid)]
        floor = Inserter(pools["r_floor"], template, args.batch)
        relayed = Inserter(pools["r_relay"], template, args.batch)
        await reader.start()
        await relay_step(relayed, reader, 500, 1, "warm", relay_pids)  # the relay's first rounds, the reader's
        progress(f"relay floor: inserts alone, {args.batch} rows an INSERT on {INSERTERS} connections")
        floors = [await floor.flat_out(args.relay_seconds, "f0")]
        steps = []
        for n, rate in enumerate(args.relay_rates):
            progress(f"relay: {rate:g} events/s for {args.relay_seconds:g} s")
            hops = Hops([metrics_port])
            await asyncio.to_thread(hops.start)
            step = await relay_step(relayed, reader, rate, args.relay_seconds, f"s{n}", relay_pids)
            await asyncio.to_thread(hops.stop)
            step["hops"] = hops.summary()
            steps.append(step)
            progress(
                f"  inserted {step['inserted_per_s']}/s, published {step['published']} of {step['inserted']}, "
                f"lag p50 {step['lag_p50_ms']} ms, p99 {step['lag_p99_ms']} ms; hops {step['hops']}"
            )
            if not step["held"]:
                break
        progress("relay floor again")
        floors.append(await floor.flat_out(args.relay_seconds, "f1"))
        held = [step["rate_per_s"] for step in steps if step["held"]]
        ceiling = max(held, default=0.0)
        floor_rate = statistics.mean(floors)
        return {
            "batch": args.batch,
            "inserters": INSERTERS,
            "steps": steps,
            "ceiling_events_per_s": ceiling,
            "insert_floor_rows_per_s": [round(f) for f in floors],
            "ceiling_to_floor": round(ceiling / floor_rate, 3),
            "target_met": ceiling >= 10_000,
        }
    finally:
        await reader.stop()
        for pool in pools.values():
            await pool.close()
        service.stop()


# --- notify's dispatch ---------------------------------------------------------------------------------------


def bench_dispatch(subscribers: int, events: int = 200, repeats: int = 5) -> dict[str, Any]:
    """What one event costs a notify worker per subscriber it holds, before any write: the hub offers every
    event to every subscriber of the worker (position, seams, filter, queue), matching or not. In-process, no
    servers: a hub of `subscribers` users' streams (none of which the event is for), one of admins' streams
    (every one queues it), and their floors: a bare loop comparing one attribute per subscriber (the least a
    per-subscriber filter in Python costs), and one appending the event to each subscriber's queue. ns per
    subscriber per event, the median of `repeats`."""
    from notify_service.hub import Event, EventFilter, Hub, Subscriber
    from svc_common.eventstream import EventId
    from svc_common.scope import Scope

    def hub_of(scope: Callable[[int], Scope]) -> Hub:
        hub = Hub(window=100)
        for i in range(subscribers):
            hub.add(Subscriber(EventFilter(scope(i)), None, max_queue=events * repeats + 1))
        return hub

    def timed(dispatch: Callable[[int], None]) -> float:
        runs = []
        for r in range(repeats):
            started = time.perf_counter()
            for k in range(events):
                dispatch(r * events + k + 1)
            runs.append((time.perf_counter() - started) / events / subscribers * 1e9)
        return round(statistics.median(runs), 1)

    def event(seq: int) -> Event:
        return Event(EventId(1_000, seq), "someone-else", "p1", "b1", b"response")

    users = hub_of(lambda i: Scope(customer_id=f"u{i}", provider_id=None))
    admins = hub_of(lambda i: Scope(customer_id=None, provider_id=None))
    customers = [f"u{i}" for i in range(subscribers)]
    queues: list[list[bytes]] = [[] for _ in range(subscribers)]  # as a Subscriber's queue

    def compare_floor(seq: int) -> None:
        one = event(seq)
        for customer, queue in zip(customers, queues, strict=True):
            if customer == one.customer_id:
                queue.append(b"response")

    def queue_floor(seq: int) -> None:
        one = event(seq)
        for queue in queues:
            queue.append(one.payload)  # type: ignore[arg-type]

    result = {
        "subscribers": subscribers,
        "not_for_them_ns": timed(lambda seq: users.dispatch([event(seq)])),
        "compare_floor_ns": timed(compare_floor),
        "for_every_one_ns": timed(lambda seq: admins.dispatch([event(seq)])),
        "queue_floor_ns": timed(queue_floor),
    }
    result["not_for_them_to_floor"] = round(result["not_for_them_ns"] / result["compare_floor_ns"], 3)
    result["for_every_one_to_floor"] = round(result["for_every_one_ns"] / result["queue_floor_ns"], 2)
    return result


# --- notify's stream readers --------------------------------------------------------------------------------


def _start_floor(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "tests.bench.reader_floor", *args], cwd=PROJECT)


async def bench_readers(
    args: argparse.Namespace, workdir: Path, pg: PostgresServer, rds: RedisServer
) -> dict[str, Any]:
    """What reading the stream costs a notify worker per event (its own XREAD, the decoding of each entry, and
    a dispatch that concerns no subscriber: a notify instance of WORKERS=2 with none), against the floor of one
    reader per instance handing each entry to its workers (tests/bench/reader_floor.py): that reader's CPU per
    event, and a receiving worker's. The events are placed by the service's relay from outbox rows inserted at
    each of `reader_rates`, as in the relay's part."""
    await create_databases(pg.url, "r_readers", "r_readers_template")
    await _migrate(pg.url_for("r_readers_template"))
    relay = ServiceProcess("booking_service", service_env(pg.url_for("r_readers"), rds.url) | {"WORKERS": "1"}, workdir)
    notify_env = {"REDIS_URL": rds.url, "JWT_SECRET": JWT_SECRET, "WORKERS": "2"}
    notify = ServiceProcess("notify_service", notify_env, workdir)
    handoff = str(workdir / "handoff.sock")
    floors: list[subprocess.Popen[bytes]] = []
    reader = StreamReader(rds.url, eventstream.DEFAULT_STREAM_KEY)
    pool = None
    try:
        relay.start()
        notify.start()
        floors.append(_start_floor("receive", handoff))
        await eventually(Path(handoff).exists, lambda: "the hand-off floor's receiver did not listen")
        floors.append(_start_floor("follow", rds.url, eventstream.DEFAULT_STREAM_KEY, handoff))
        assert relay.process is not None and notify.process is not None
        relay_pids = [relay.process.pid, *children(relay.process.pid)]
        workers = children(notify.process.pid)
        template = await template_event(pg.url_for("r_readers_template"))
        pool = await asyncpg.create_pool(pg.url_for("r_readers"), min_size=INSERTERS, max_size=INSERTERS)
        inserter = Inserter(pool, template, args.batch)
        await reader.start()
        await relay_step(inserter, reader, 500, 2, "warm", relay_pids)  # every reader's first rounds
        steps = []
        for n, rate in enumerate(args.reader_rates):
            progress(f"stream readers: {rate:g} events/s for {args.reader_seconds:g} s")
            before = [cpu_seconds(workers), cpu_seconds([floors[1].pid]), cpu_seconds([floors[0].pid])]
            step = await relay_step(inserter, reader, rate, args.reader_seconds, f"r{n}", relay_pids)
            after = [cpu_seconds(workers), cpu_seconds([floors[1].pid]), cpu_seconds([floors[0].pid])]
            events = max(step["published"], 1)
            worker_us, follow_us, receive_us = ((b - a) / events * 1e6 for a, b in zip(before, after, strict=True))
            worker_us /= len(workers)
            steps.append(
                {
                    "rate_per_s": rate,
                    "events": step["published"],
                    "notify_worker_us_per_event": round(worker_us, 1),
                    "floor_reader_us_per_event": round(follow_us, 1),
                    "floor_receiver_us_per_event": round(receive_us, 1),
                    # What one reader per instance could save at most: each worker's read replaced by a receive,
                    # the instance paying the reader once (with two workers).
                    "most_saved_per_event_us": round(len(workers) * (worker_us - receive_us) - follow_us, 1),
                }
            )
            progress(f"  {steps[-1]}")
        return {"notify_workers": len(workers), "steps": steps}
    finally:
        await reader.stop()
        if pool is not None:
            await pool.close()
        for process in floors:
            process.terminate()
            process.wait(10)
        notify.stop()
        relay.stop()


# --- run and report -----------------------------------------------------------------------------------------


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    pg = PostgresServer(workdir / "postgres")
    pg.start()
    rds = RedisServer(workdir / "redis")
    rds.start()
    try:
        result: dict[str, Any] = {"benchmark": "ceilings against their floors", "rounds": args.rounds}
        if args.only in (None, "writes"):
            result["writes"] = await bench_writes(args, workdir, pg, rds)
        if args.only in (None, "relay"):
            result["relay"] = await bench_relay(args, workdir, pg, rds)
        if args.only in (None, "dispatch"):
            progress(f"notify dispatch: one event offered to {args.dispatch_subscribers} subscribers")
            result["dispatch"] = bench_dispatch(args.dispatch_subscribers)
        if args.only in (None, "readers"):
            result["readers"] = await bench_readers(args, workdir, pg, rds)
        return result
    finally:
        rds.stop()
        pg.stop("fast")


def report(result: dict[str, Any]) -> None:
    for op, label in (("create", "CreateBooking"), ("update", "UpdateBooking")):
        writes = result.get("writes", {}).get(op)
        if writes is None:
            continue
        print(f"{label} at saturation | calls/s (median) | server CPU us/call | PostgreSQL CPU us/call")
        for name in ("raw asyncpg", "bare grpc.aio", SERVICE, SERVICE_APART):
            side = writes[name]
            print(f"{name} | {side['calls_per_s']:g} | {side['server_cpu_us_per_call']:g} | "
                  f"{side['postgres_cpu_us_per_call']:g}")  # fmt: skip
        to_bare = writes["service_to_bare"]
        print(f"service / bare grpc.aio: {to_bare['median']} (rounds {to_bare['rounds']}); "
              f"service / raw: {writes['service_to_raw']['median']}; bare / raw: {writes['bare_to_raw']['median']} "
              f"({'met' if writes['target_met'] else 'MISSED'}: >= 0.7x the bare floor); "
              f"with the relay apart / bare grpc.aio: {writes['apart_to_bare']['median']}")  # fmt: skip
    relay = result.get("relay")
    if relay is not None:
        print("relay step events/s | inserted/s | published | lag p50 ms | lag p99 ms | relay CPU us/event")
        for step in relay["steps"]:
            print(f"{step['rate_per_s']:g} | {step['inserted_per_s']} | {step['published']} of {step['inserted']} | "
                  f"{step['lag_p50_ms']} | {step['lag_p99_ms']} | {step['relay_cpu_us_per_event']}")  # fmt: skip
        print(f"relay ceiling {relay['ceiling_events_per_s']:g} events/s with lag p99 < {LAG_TARGET_MS:g} ms; "
              f"insert floor {relay['insert_floor_rows_per_s']} rows/s; ratio {relay['ceiling_to_floor']} "
              f"({'met' if relay['target_met'] else 'MISSED'}: >= 10,000 events/s)")  # fmt: skip
    dispatch = result.get("dispatch")
    if dispatch is not None:
        print(f"notify dispatch, ns per subscriber per event ({dispatch['subscribers']} on a worker): "
              f"not for them {dispatch['not_for_them_ns']:g} (floor, a comparison each: "
              f"{dispatch['compare_floor_ns']:g}; ratio {dispatch['not_for_them_to_floor']}); "
              f"for every one {dispatch['for_every_one_ns']:g} (floor, an append each: "
              f"{dispatch['queue_floor_ns']:g}; ratio {dispatch['for_every_one_to_floor']})")  # fmt: skip
    readers = result.get("readers")
    if readers is not None:
        print(
            f"stream readers, us of CPU per event | a notify worker's own read ({readers['notify_workers']} workers, "
            "no subscriber) | floor: one reader handing on | floor: a worker receiving | most saved per instance"
        )
        for step in readers["steps"]:
            print(f"{step['rate_per_s']:g} events/s | {step['notify_worker_us_per_event']:g} | "
                  f"{step['floor_reader_us_per_event']:g} | {step['floor_receiver_us_per_event']:g} | "
                  f"{step['most_saved_per_event_us']:g}")  # fmt: skip
    print(f"written: {OUT_DIR / 'capacity.json'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--relay-rates", type=lambda s: [float(x) for x in s.split(",")],
                        default=[1000, 2500, 5000, 10000, 15000, 20000, 30000])  # fmt: skip
    parser.add_argument("--relay-seconds", type=float, default=5.0)
    parser.add_argument("--batch", type=int, default=50, help="outbox rows per INSERT in the relay benchmark")
    parser.add_argument("--dispatch-subscribers", type=int, default=10_000)
    parser.add_argument("--reader-rates", type=lambda s: [float(x) for x in s.split(",")], default=[200, 1000, 5000])
    parser.add_argument("--reader-seconds", type=float, default=10.0)
    parser.add_argument("--only", choices=("writes", "relay", "dispatch", "readers"))
    args = parser.parse_args()
    result = run_in_workdir(run, args)
    write_result("capacity.json", result)
    report(result)


if __name__ == "__main__":
    main()
