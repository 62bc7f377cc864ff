"""Storage's handling of transient database failures, with real PostgreSQL errors and real lost connections."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from booking_service.database import Connection, Database, DatabaseConfig
from booking_service.domain import Actor, NewBooking
from booking_service.rows import booking_from_record
from booking_service.storage import CREATE_SQL
from svc_common.auth import Role
from svc_common.errors import Aborted, Unavailable

ACTOR = Actor("tester", "Tester", Role.ADMIN)


@pytest.fixture
async def storage(new_database: Callable[[], str]) -> AsyncIterator[Database]:
    store = Database(DatabaseConfig(dsn=new_database(), attempts=3, retry_backoff=0.01))
    await store.open()
    await store.prepare_schema(None)
    yield store
    await store.close()


async def test_serialization_failures_and_deadlocks_are_retried(storage: Database) -> None:
    attempts = []

    async def work(conn: Connection) -> str:
        attempts.append(1)
        if len(attempts) == 1:
            await conn.execute("DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; END $$")
        if len(attempts) == 2:
            await conn.execute("DO $$ BEGIN RAISE EXCEPTION 'deadlock' USING ERRCODE = '40P01'; END $$")
        return "done"

    assert await storage.run(work) == "done"
    assert len(attempts) == 3


async def test_retries_are_bounded_then_aborted(storage: Database) -> None:
    attempts = []

    async def work(conn: Connection) -> None:
        attempts.append(1)
        await conn.execute("DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; END $$")

    with pytest.raises(Aborted) as info:
        await storage.run(work)
    assert info.value.reason == "CONCURRENT_MODIFICATION"
    assert len(attempts) == 3


async def test_a_write_whose_connection_died_after_commit_is_not_done_twice(storage: Database) -> None:
    """The first attempt commits, then its connection is terminated before the answer is read."""
    booking_id, op_id = uuid.uuid4(), uuid.uuid4()
    start = datetime(2032, 1, 1, tzinfo=UTC)
    new = NewBooking("cust", "prov", "svc", start, start + timedelta(hours=1), "")
    attempts = []

    async def work(conn: Connection) -> str:
        attempts.append(1)
        record = await conn.fetchrow(
            CREATE_SQL, booking_id, *vars_of(new), ACTOR.id, None, op_id, ACTOR.name, ACTOR.role.value
        )
        assert record is not None
        # The server drops this connection, as a network cut or a restart would, before we return the answer.
        await conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")
        raise AssertionError("the connection should have been dropped")

    async def committed(conn: Connection) -> str | None:
        record = await conn.fetchrow("SELECT * FROM bookings WHERE id = $1", booking_id)
        return booking_from_record(record).id if record else None

    assert await storage.run(work, committed=committed) == str(booking_id)
    assert len(attempts) == 1
    conn = await asyncpg.connect(storage._config.dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM booking_audit WHERE id = $1", op_id) == 1
    finally:
        await conn.close()


async def test_an_unreachable_database_is_unavailable(storage: Database) -> None:
    attempts = []

    async def work(conn: Connection) -> None:
        attempts.append(1)
        raise ConnectionRefusedError("database down")

    with pytest.raises(Unavailable) as info:
        await storage.run(work)
    assert info.value.reason == "DATABASE_UNAVAILABLE"
    assert len(attempts) == 3


def vars_of(new: NewBooking) -> tuple[object, ...]:
    return (new.customer_id, new.provider_id, new.service_id, new.start_time, new.end_time, new.notes)
