"""Write-path benchmark: the service against raw asyncpg running the same SQL, side by side in one run.

    python -m tests.bench.bench_write_path [--rate 200] [--fixed-seconds 30] [--seconds 8] [--concurrency 32]
        [--rounds 3]

1. Fixed rate (the target): CreateBooking sent at `rate` per second (open loop: a slow call does not delay the
   next) for `fixed-seconds` in all, against raw asyncpg running the same statement at the same rate; p50 and
   p99 of each, from send to answer. Target: the service adds at most 1 ms to raw's p50 and 3 ms to its p99.
2. Saturation: CreateBooking + DeleteBooking pairs with the same concurrency and pool size on both sides; the
   ratio of their median throughputs (reported, not the target).

Both run against one private PostgreSQL server, alternating halves or rounds so that drift on a shared machine
hits both alike. The SQL includes the outbox insert of each change event; the service also relays those events
to Redis. The service runs as its own process (`python -m booking_service`), called over gRPC on a real port.
Results: a table on the terminal and .local/bench/write_path.json.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import grpc

from booking_api.booking.v1 import booking_pb2, booking_pb2_grpc
from booking_service.database import Database, DatabaseConfig, release_connection
from booking_service.sql import CREATE_SQL, DELETE_SQL
from devtools.servers import PostgresServer, RedisServer
from tests.bench.common import OUT_DIR, create_databases, open_loop, progress, run_in_workdir, write_result
from tests.support.helpers import auth, ts
from tests.support.servers import ServiceProcess

POOL_SIZE = 10
EPOCH = datetime(2040, 1, 1, tzinfo=UTC)


async def closed_loops(concurrency: int, seconds: float, pair: Callable[[int, int], Awaitable[None]]) -> float:
    """Run `pair(worker, i)` in `concurrency` loops, each waiting for its previous one, for `seconds`; returns
    how many finished per second (here: create + delete pairs; tests/bench/bench_capacity.py: single calls)."""
    done = 0
    deadline = time.perf_counter() + seconds

    async def loop(worker: int) -> None:
        nonlocal done
        i = 0
        while time.perf_counter() < deadline:
            await pair(worker, i)
            i += 1
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(loop(w) for w in range(concurrency)))
    return done / (time.perf_counter() - started)


def _slot(i: int) -> tuple[datetime, datetime]:
    start = EPOCH + timedelta(hours=i)
    return start, start + timedelta(minutes=30)


async def _raw_create(pool: asyncpg.Pool[asyncpg.Record], provider: str, i: int) -> asyncpg.Record:
    """CreateBooking's statement, as the service runs it, for slot `i` of `provider`."""
    start, end = _slot(i)
    async with pool.acquire() as conn:
        record = await conn.fetchrow(
            CREATE_SQL, uuid.uuid4(), "customer", provider, "svc", start, end, "", "bench", None, uuid.uuid4(),
            "Bench", "admin", None, "", timedelta(0), timedelta(0),
        )  # fmt: skip
    assert record is not None
    return record


async def raw_pool(dsn: str) -> asyncpg.Pool[asyncpg.Record]:
    """The baseline's pool, configured as the service's (size, time zone, reset on release)."""
    return await asyncpg.create_pool(
        dsn, min_size=POOL_SIZE, max_size=POOL_SIZE, server_settings={"timezone": "UTC"}, reset=release_connection
    )


def service_env(database_url: str, redis_url: str) -> dict[str, str]:
    """The service's settings in a benchmark: the baseline's pool size."""
    return {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "JWT_SECRET": "tests-only-secret-0123456789abcdef-0123456789",
        "DB_MIN_CONNECTIONS": str(POOL_SIZE),
        "DB_MAX_CONNECTIONS": str(POOL_SIZE),
    }


def side_by_side(raw_ms: list[float], svc_ms: list[float]) -> dict[str, Any]:
    """p50 and p99 of each, what the service adds, and whether that meets the target (+1 ms p50, +3 ms p99)."""
    row: dict[str, Any] = {
        "raw_asyncpg": {"p50_ms": _quantile(raw_ms, 0.5), "p99_ms": _quantile(raw_ms, 0.99)},
        "service": {"p50_ms": _quantile(svc_ms, 0.5), "p99_ms": _quantile(svc_ms, 0.99)},
    }
    row["added_p50_ms"] = round(row["service"]["p50_ms"] - row["raw_asyncpg"]["p50_ms"], 2)
    row["added_p99_ms"] = round(row["service"]["p99_ms"] - row["raw_asyncpg"]["p99_ms"], 2)
    row["target_met"] = row["added_p50_ms"] <= 1.0 and row["added_p99_ms"] <= 3.0
    return row


async def raw_round(dsn: str, concurrency: int, seconds: float, tag: str) -> float:
    pool = await raw_pool(dsn)
    try:

        async def pair(worker: int, i: int) -> None:
            record = await _raw_create(pool, f"{tag}-p{worker}", i)
            async with pool.acquire() as conn:
                await conn.fetchrow(
                    DELETE_SQL, record["id"], "bench", "Bench", "admin", "bench", None, None, None, uuid.uuid4(), None
                )

        return await closed_loops(concurrency, seconds, pair)
    finally:
        await pool.close()


async def paced_latencies(rate: float, seconds: float, call: Callable[[int], Awaitable[object]]) -> list[float]:
    """Start `call(k)` `rate` times per second for `seconds`, whatever the calls before it are doing; returns
    each call's latency in ms."""
    latencies: list[float] = []

    async def timed(k: int) -> None:
        started = time.perf_counter()
        await call(k)
        latencies.append((time.perf_counter() - started) * 1000)

    await open_loop(rate, seconds, timed)
    return latencies


async def raw_fixed(dsn: str, rate: float, seconds: float, tag: str) -> list[float]:
    pool = await raw_pool(dsn)
    try:

        async def create(k: int) -> None:
            await _raw_create(pool, f"{tag}-p", k)

        return await paced_latencies(rate, seconds, create)
    finally:
        await pool.close()


async def _service_create(
    stub: booking_pb2_grpc.BookingServiceAsyncStub, metadata: Any, provider: str, i: int
) -> booking_pb2.CreateBookingResponse:
    """CreateBooking for slot `i` of `provider`, the same booking `_raw_create` inserts."""
    start, end = _slot(i)
    booking = booking_pb2.Booking(
        customer_id="customer", provider_id=provider, service_id="svc", start_time=ts(start), end_time=ts(end)
    )
    response: booking_pb2.CreateBookingResponse = await stub.CreateBooking(
        booking_pb2.CreateBookingRequest(booking=booking), metadata=metadata
    )
    return response


async def service_fixed(address: str, rate: float, seconds: float, tag: str) -> list[float]:
    metadata = auth("admin", "bench")
    async with grpc.aio.insecure_channel(address) as channel:
        stub: booking_pb2_grpc.BookingServiceAsyncStub = booking_pb2_grpc.BookingServiceStub(channel)

        async def create(k: int) -> None:
            await _service_create(stub, metadata, f"{tag}-p", k)

        return await paced_latencies(rate, seconds, create)


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


async def service_round(address: str, concurrency: int, seconds: float, tag: str) -> float:
    metadata = auth("admin", "bench")
    async with grpc.aio.insecure_channel(address) as channel:
        stub: booking_pb2_grpc.BookingServiceAsyncStub = booking_pb2_grpc.BookingServiceStub(channel)

        async def pair(worker: int, i: int) -> None:
            created = await _service_create(stub, metadata, f"{tag}-p{worker}", i)
            await stub.DeleteBooking(
                booking_pb2.DeleteBookingRequest(booking_id=created.booking.id, reason="bench"), metadata=metadata
            )

        return await closed_loops(concurrency, seconds, pair)


async def _migrate(dsn: str) -> None:
    storage = Database(DatabaseConfig(dsn=dsn))
    await storage.open()
    try:
        await storage.prepare_schema(None)
    finally:
        await storage.close()


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    pg = PostgresServer(workdir / "postgres", durable=not args.no_fsync)
    pg.start()
    rds = RedisServer(workdir / "redis")  # the service publishes its change events there
    rds.start()
    service = None
    try:
        await create_databases(pg.url, "raw", "svc")
        await _migrate(pg.url_for("raw"))
        service = ServiceProcess("booking_service", service_env(pg.url_for("svc"), rds.url), workdir)
        service.start()
        # Warm-up, then alternate so that drift on a shared machine hits both sides alike.
        await raw_round(pg.url_for("raw"), args.concurrency, 1, "warm")
        await service_round(service.address, args.concurrency, 1, "warm")
        raw_ms: list[float] = []
        svc_ms: list[float] = []
        half = args.fixed_seconds / 2
        for h in range(2):
            progress(
                f"fixed rate, half {h + 1} of 2: raw asyncpg, then the service, {args.rate:g}/s for {half:g} s each"
            )
            raw_ms += await raw_fixed(pg.url_for("raw"), args.rate, half, f"fixed{h}")
            svc_ms += await service_fixed(service.address, args.rate, half, f"fixed{h}")
        raw, svc = [], []
        for r in range(args.rounds):
            progress(f"saturation, round {r + 1} of {args.rounds}: {args.concurrency} concurrent pairs")
            raw.append(await raw_round(pg.url_for("raw"), args.concurrency, args.seconds, f"r{r}"))
            svc.append(await service_round(service.address, args.concurrency, args.seconds, f"r{r}"))
        fixed = {"rate_per_s": args.rate, "seconds": args.fixed_seconds, **side_by_side(raw_ms, svc_ms)}
        return {
            "benchmark": "write path: the service against raw asyncpg running the same SQL",
            "postgres_fsync": not args.no_fsync,
            "fixed_rate_create": fixed,
            "fixed_rate_target": "the service adds <= 1 ms to raw's p50 and <= 3 ms to its p99",
            "saturation": {
                "concurrency": args.concurrency,
                "pool_size": POOL_SIZE,
                "raw_asyncpg_pairs_per_s": [round(x, 1) for x in raw],
                "service_pairs_per_s": [round(x, 1) for x in svc],
                "ratio_service_to_raw": round(statistics.median(svc) / statistics.median(raw), 3),
            },
        }
    finally:
        if service is not None:
            service.stop()
        rds.stop()
        pg.stop("fast")


def report(result: dict[str, Any]) -> None:
    fixed, saturation = result["fixed_rate_create"], result["saturation"]
    raw, svc = fixed["raw_asyncpg"], fixed["service"]
    print(f"CreateBooking at {fixed['rate_per_s']:g}/s for {fixed['seconds']:g} s | raw asyncpg | service | added")
    print(f"p50 ms | {raw['p50_ms']} | {svc['p50_ms']} | {fixed['added_p50_ms']} (target <= 1)")
    print(f"p99 ms | {raw['p99_ms']} | {svc['p99_ms']} | {fixed['added_p99_ms']} (target <= 3)")
    print(
        f"saturation, pairs/s (median of {len(saturation['raw_asyncpg_pairs_per_s'])} rounds) | "
        f"ratio service/raw {saturation['ratio_service_to_raw']}"
    )
    print(f"{'met' if fixed['target_met'] else 'MISSED'}: {result['fixed_rate_target']}")
    print(f"written: {OUT_DIR / 'write_path.json'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=200.0, help="fixed-rate CreateBookings per second")
    parser.add_argument("--fixed-seconds", type=float, default=30.0)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-fsync", action="store_true", help="run PostgreSQL without fsync (harder on us)")
    args = parser.parse_args()
    result = run_in_workdir(run, args)
    write_result("write_path.json", result)
    report(result)


if __name__ == "__main__":
    main()
