"""The automatic retention purge (RETENTION_DAYS) hard-deletes bookings deleted longer ago than that."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import grpc

from booking_api.booking.v1 import booking_pb2, booking_pb2_grpc
from tests.support.helpers import Caller, expect_error, uid
from tests.support.servers import ServiceProcess, booking_env


async def test_bookings_deleted_before_the_retention_period_are_purged(
    new_database: Callable[[], str], redis_url: str, workdir: Path
) -> None:
    database = new_database()
    env = {**booking_env(database, redis_url), "RETENTION_DAYS": "30", "RETENTION_INTERVAL_SECONDS": "0.2"}
    service = ServiceProcess("booking_service", env, workdir)
    service.start()
    try:
        async with grpc.aio.insecure_channel(service.address) as channel:
            stub = booking_pb2_grpc.BookingServiceStub(channel)
            alice, admin = Caller(stub, "user", uid("alice")), Caller(stub, "admin", uid("admin"))
            old, recent, active = [await alice.create(provider_id=uid("prov")) for _ in range(3)]
            await alice.delete(old.id)
            await alice.delete(recent.id)
            conn = await asyncpg.connect(database)
            try:
                await conn.execute(
                    "UPDATE bookings SET delete_time = $1 WHERE id = $2",
                    datetime.now(UTC) - timedelta(days=31),
                    old.id,
                )
            finally:
                await conn.close()

            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    await admin.get(old.id)
                except grpc.aio.AioRpcError:
                    break
                await asyncio.sleep(0.2)
            await expect_error(admin.get(old.id), grpc.StatusCode.NOT_FOUND)
            entries = await admin.audit(old.id)
            assert entries[-1].action == booking_pb2.AUDIT_ACTION_HARD_DELETED
            assert entries[-1].actor.id == "system:retention"
            assert (await admin.get(recent.id)).HasField("delete_time")
            assert await alice.get(active.id) == active
    finally:
        service.stop()
