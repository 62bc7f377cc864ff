"""Write-path benchmark: CreateBooking + DeleteBooking through the service vs raw asyncpg running the same SQL.

    python -m tests.bench.bench_write_path [--seconds 8] [--concurrency 32] [--rounds 3]

Both sides run side by side in one run, against one private PostgreSQL server, with the same concurrency
and pool size, alternating rounds; the report is the ratio of their median throughputs (target >= 0.8).
The SQL includes the outbox insert of each change event; the service also relays those events to Redis.
The service runs as its own process (`python -m booking_service`), called over gRPC on a real port.
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

import asyncpg
import grpc

from booking_api.booking.v1 import booking_pb2, booking_pb2_grpc
from booking_service.database import Database, DatabaseConfig, release_connection
from booking_service.storage import CREATE_SQL, DELETE_SQL
from svc_common.dev.servers import PostgresServer, RedisServer
from tests.support.helpers import auth, ts
from tests.support.servers import ServiceProcess, run_benchmark

POOL_SIZE = 10
EPOCH = datetime(2040, 1, 1, tzinfo=UTC)


async def _drive(concurrency: int, seconds: float, pair: Callable[[int, int], Awaitable[None]]) -> float:
    """Run `pair(worker, i)` (one create + one delete) in `concurrency` loops; returns pairs per second."""
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


async def raw_round(dsn: str, concurrency: int, seconds: float, tag: str) -> float:
    # The same pool configuration as the service's (size, time zone, reset on release).
    pool = await asyncpg.create_pool(
        dsn, min_size=POOL_SIZE, max_size=POOL_SIZE, server_settings={"timezone": "UTC"}, reset=release_connection
    )
    try:

        async def pair(worker: int, i: int) -> None:
            start, end = _slot(i)
            provider = f"{tag}-p{worker}"
            async with pool.acquire() as conn:
                record = await conn.fetchrow(
                    CREATE_SQL,
                    uuid.uuid4(),
                    "customer",
                    provider,
                    "svc",
                    start,
                    end,
                    "",
                    "bench",
                    None,
                    uuid.uuid4(),
                    "Bench",
                    "admin",
                )
            assert record is not None
            async with pool.acquire() as conn:
                await conn.fetchrow(
                    DELETE_SQL, record["id"], "bench", "Bench", "admin", "bench", None, None, None, uuid.uuid4()
                )

        return await _drive(concurrency, seconds, pair)
    finally:
        await pool.close()


async def service_round(address: str, concurrency: int, seconds: float, tag: str) -> float:
    metadata = auth("admin", "bench")
    async with grpc.aio.insecure_channel(address) as channel:
        stub = booking_pb2_grpc.BookingServiceStub(channel)

        async def pair(worker: int, i: int) -> None:
            start, end = _slot(i)
            booking = booking_pb2.Booking(
                customer_id="customer",
                provider_id=f"{tag}-p{worker}",
                service_id="svc",
                start_time=ts(start),
                end_time=ts(end),
            )
            created = await stub.CreateBooking(booking_pb2.CreateBookingRequest(booking=booking), metadata=metadata)
            await stub.DeleteBooking(
                booking_pb2.DeleteBookingRequest(booking_id=created.booking.id, reason="bench"), metadata=metadata
            )

        return await _drive(concurrency, seconds, pair)


async def _migrate(dsn: str) -> None:
    storage = Database(DatabaseConfig(dsn=dsn))
    await storage.open()
    try:
        await storage.prepare_schema(None)
    finally:
        await storage.close()


async def _create_databases(server_url: str, *names: str) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        for name in names:
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, object]:
    pg = PostgresServer(workdir / "postgres", durable=not args.no_fsync)
    pg.start()
    rds = RedisServer(workdir / "redis")  # the service publishes its change events there
    rds.start()
    service = None
    try:
        await _create_databases(pg.url, "raw", "svc")
        await _migrate(pg.url_for("raw"))
        service = ServiceProcess(
            "booking_service",
            {
                "DATABASE_URL": pg.url_for("svc"),
                "REDIS_URL": rds.url,
                "JWT_SECRET": "tests-only-secret-0123456789abcdef-0123456789",
                "DB_MIN_CONNECTIONS": str(POOL_SIZE),
                "DB_MAX_CONNECTIONS": str(POOL_SIZE),
            },
            workdir,
        )
        service.start()
        raw, svc = [], []
        # Warm-up, then alternate so that drift on a shared machine hits both sides alike.
        await raw_round(pg.url_for("raw"), args.concurrency, 1, "warm")
        await service_round(service.address, args.concurrency, 1, "warm")
        for r in range(args.rounds):
            raw.append(await raw_round(pg.url_for("raw"), args.concurrency, args.seconds, f"r{r}"))
            svc.append(await service_round(service.address, args.concurrency, args.seconds, f"r{r}"))
        return {
            "benchmark": "write path: CreateBooking + DeleteBooking pairs per second",
            "postgres_fsync": not args.no_fsync,
            "concurrency": args.concurrency,
            "pool_size": POOL_SIZE,
            "raw_asyncpg_pairs_per_s": [round(x, 1) for x in raw],
            "service_pairs_per_s": [round(x, 1) for x in svc],
            "ratio_service_to_raw": round(statistics.median(svc) / statistics.median(raw), 3),
            "target": ">= 0.8",
        }
    finally:
        if service is not None:
            service.stop()
        rds.stop()
        pg.stop("fast")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-fsync", action="store_true", help="run PostgreSQL without fsync (harder on us)")
    run_benchmark(run, parser.parse_args())


if __name__ == "__main__":
    main()
