"""Storage's handling of transient database failures, with real PostgreSQL errors and real lost connections."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import asyncpg
import pytest

from booking_service.database import Connection, Database, DatabaseConfig
from booking_service.domain import Actor, NewBooking
from booking_service.rows import booking_from_record
from booking_service.sql import CREATE_SQL
from booking_service.storage import Storage
from svc_common.errors import Aborted, Unavailable
from svc_common.principal import Role

ACTOR = Actor("tester", "Tester", Role.ADMIN)
T = TypeVar("T")


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
            CREATE_SQL,
            booking_id,
            *vars_of(new),
            ACTOR.id,
            None,
            op_id,
            ACTOR.name,
            ACTOR.role.value,
            None,
            "",
            timedelta(0),
            timedelta(0),
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


class LosesFirstReply(Database):
    """A database whose first statement commits and then loses its connection before the reply is read, as a
    network cut would: the retry must find the committed work through storage's own `committed` checks."""

    lost = 0

    async def run(self, work: Callable[[Connection], Awaitable[T]], **kwargs: Any) -> T:
        async def once_lost(conn: Connection) -> T:
            result = await work(conn)
            if not self.lost:
                self.lost += 1
                await conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")
            return result

        return await super().run(once_lost, **kwargs)


@pytest.fixture
async def flaky(new_database: Callable[[], str]) -> AsyncIterator[tuple[Storage, LosesFirstReply]]:
    db = LosesFirstReply(DatabaseConfig(dsn=new_database(), attempts=3, retry_backoff=0.01))
    await db.open()
    await db.prepare_schema(None)
    yield Storage(db), db
    await db.close()


async def _count(db: Database, sql: str, *args: object) -> int:
    conn = await asyncpg.connect(db._config.dsn)
    try:
        count: int = await conn.fetchval(sql, *args)
        return count
    finally:
        await conn.close()


async def test_each_write_whose_reply_was_lost_after_commit_returns_what_it_committed_once(
    flaky: tuple[Storage, LosesFirstReply],
) -> None:
    storage, db = flaky
    start = datetime(2032, 2, 1, tzinfo=UTC)
    new = NewBooking("cust", "prov", "svc", start, start + timedelta(hours=1), "")
    booking_id = uuid.uuid4()

    booking, created = await storage.create(
        new, booking_id=booking_id, op_id=uuid.uuid4(), actor=ACTOR, request_id=None
    )
    assert (booking.id, created, db.lost) == (str(booking_id), True, 1)

    db.lost = 0
    deleted = await storage.soft_delete(
        booking_id, op_id=uuid.uuid4(), actor=ACTOR, reason="r", scope_customer=None, scope_provider=None, version=None
    )
    assert deleted is not None and deleted.deleted and db.lost == 1

    db.lost = 0
    restored = await storage.restore(booking_id, op_id=uuid.uuid4(), actor=ACTOR, version=None)
    assert restored is not None and not restored.deleted and db.lost == 1

    await storage.soft_delete(
        booking_id, op_id=uuid.uuid4(), actor=ACTOR, reason="r", scope_customer=None, scope_provider=None, version=None
    )
    db.lost = 0
    assert await storage.hard_delete(booking_id, op_id=uuid.uuid4(), actor=ACTOR) is True
    assert db.lost == 1

    actions = ["CREATED", "DELETED", "RESTORED", "DELETED", "HARD_DELETED"]
    audit = "SELECT count(*) FROM booking_audit WHERE booking_id = $1"
    assert await _count(db, audit, booking_id) == len(actions)
    assert await _count(db, "SELECT count(*) FROM booking_outbox WHERE booking->>'id' = $1", str(booking_id)) == 5


def vars_of(new: NewBooking) -> tuple[object, ...]:
    return (new.customer_id, new.provider_id, new.service_id, new.start_time, new.end_time, new.notes)


async def test_a_read_only_server_renews_the_pool_and_is_unavailable_not_an_error(storage: Database) -> None:
    """A connection that answers read-only (SQLSTATE 25006: a standby, or a primary demoted by a failover) wrote
    nothing: the call is tried again on new connections, is UNAVAILABLE while the server stays read-only, and
    the pooled connections (whose sessions began read-only) are replaced, so writes work once it takes them."""
    async with storage.pool.acquire() as conn:
        database = await conn.fetchval("SELECT current_database()")
        await conn.execute(f'ALTER DATABASE "{database}" SET default_transaction_read_only = on')
    await storage.pool.expire_connections()  # every connection from now on starts read-only

    async def write(conn: Connection) -> str:
        await conn.execute("CREATE TEMP TABLE IF NOT EXISTS t (x int); INSERT INTO t VALUES (1)")
        return "ok"

    async def make_writable() -> None:
        owner = await asyncpg.connect(storage.connector.url)
        try:
            await owner.execute("SET default_transaction_read_only = off")
            await owner.execute(f'ALTER DATABASE "{database}" RESET default_transaction_read_only')
        finally:
            await owner.close()

    with pytest.raises(Unavailable) as refused:
        await storage.run(write)
    assert refused.value.reason == "DATABASE_UNAVAILABLE"
    assert isinstance(refused.value.__cause__, asyncpg.ReadOnlySQLTransactionError)
    await make_writable()
    assert await storage.run(write) == "ok"
