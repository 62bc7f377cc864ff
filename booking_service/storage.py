"""PostgreSQL storage: owns the asyncpg pool, the migrations and every SQL statement.

Each operation is a single statement (a data-modifying CTE writes the booking, its audit entry and its
change event in the outbox together), so it commits atomically with one round trip. Database errors are
translated here into the `svc_common.errors` tree: transient ones (connection lost, serialization failure,
deadlock) are retried a bounded number of times, then surface as Unavailable or Aborted.

A write that lost its connection may have committed. Every write carries the id of the audit entry it
writes (`op_id`), so before retrying it, storage checks whether that entry exists and, if so, returns
what the first attempt committed instead of doing the work twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg

from booking_service import schema
from booking_service.domain import Actor, AuditAction, AuditEntry, Booking, NewBooking
from svc_common.auth import Role
from svc_common.backoff import Backoff
from svc_common.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    Unavailable,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
Record = asyncpg.Record
if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    Connection = PoolConnectionProxy[Record]
else:
    Connection = asyncpg.pool.PoolConnectionProxy


# Errors after which the statement certainly did not commit and may simply run again.
RETRYABLE_ROLLBACK = (asyncpg.SerializationError, asyncpg.DeadlockDetectedError)


class DatabaseRefused(Exception):
    """The server answered but refused a new connection."""


# Errors that mean the database is unreachable or the connection gone; a write may or may not have committed.
# asyncpg raises InternalClientError ("cannot switch to state ...") when the server ends a connection in the
# middle of an operation.
CONNECTION_ERRORS = (
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    asyncpg.InternalClientError,
    DatabaseRefused,
    OSError,
    TimeoutError,
)
# For work on a connection of its own (the relay, health, notifications): an InterfaceError there also means
# the connection is unusable ("connection is closed", "another operation is in progress").
LOST_CONNECTION = (*CONNECTION_ERRORS, asyncpg.InterfaceError)


@dataclass(frozen=True)
class StorageConfig:
    dsn: str
    min_connections: int = 2
    max_connections: int = 10
    command_timeout: float = 10.0
    acquire_timeout: float = 5.0
    attempts: int = 3
    retry_backoff: float = 0.05
    close_seconds: float = 3.0  # on shutdown, how long connections in use may take before they are terminated


async def release_connection(conn: asyncpg.Connection[Record]) -> None:
    """Pool reset on release. Storage never changes session state (no SET, LISTEN, cursors or held locks) and
    runs single autocommit statements, so only a transaction left open by a failure needs undoing; asyncpg's
    default reset would cost every call a second round trip."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


@dataclass(frozen=True)
class ListQuery:
    """A page of bookings; each filter None means unrestricted."""

    customer_id: str | None
    provider_id: str | None
    after: tuple[datetime, uuid.UUID] | None
    limit: int


def _actor(record: Record, prefix: str) -> Actor | None:
    actor_id = record[f"{prefix}_id"]
    if actor_id is None:
        return None
    return Actor(actor_id, record[f"{prefix}_name"], Role(record[f"{prefix}_role"]))


def booking_from_record(record: Record) -> Booking:
    return Booking(
        id=str(record["id"]),
        customer_id=record["customer_id"],
        provider_id=record["provider_id"],
        service_id=record["service_id"],
        start_time=record["start_time"],
        end_time=record["end_time"],
        notes=record["notes"],
        create_time=record["create_time"],
        update_time=record["update_time"],
        version=record["version"],
        delete_time=record["delete_time"],
        deleted_by=_actor(record, "deleted_by"),
        deletion_reason=record["deletion_reason"],
    )


def booking_from_json(data: dict[str, Any]) -> Booking:
    def ts(key: str) -> datetime | None:
        value = data.get(key)
        return datetime.fromisoformat(value) if value else None

    deleted_by = None
    if data.get("deleted_by_id") is not None:
        deleted_by = Actor(data["deleted_by_id"], data["deleted_by_name"], Role(data["deleted_by_role"]))
    start, end, created, updated = ts("start_time"), ts("end_time"), ts("create_time"), ts("update_time")
    assert start and end and created and updated, "snapshot lacks a timestamp"
    return Booking(
        id=data["id"],
        customer_id=data["customer_id"],
        provider_id=data["provider_id"],
        service_id=data["service_id"],
        start_time=start,
        end_time=end,
        notes=data["notes"],
        create_time=created,
        update_time=updated,
        version=data["version"],
        delete_time=ts("delete_time"),
        deleted_by=deleted_by,
        deletion_reason=data["deletion_reason"],
    )


def audit_from_record(record: Record) -> AuditEntry:
    snapshot = record["snapshot"]
    return AuditEntry(
        id=str(record["id"]),
        booking_id=str(record["booking_id"]),
        action=AuditAction(record["action"]),
        actor=Actor(record["actor_id"], record["actor_name"], Role(record["actor_role"])),
        reason=record["reason"],
        create_time=record["create_time"],
        snapshot=booking_from_json(json.loads(snapshot)) if snapshot is not None else None,
        seq=record["seq"],
    )


_AUDIT_INSERT = """
    INSERT INTO booking_audit (id, booking_id, action, actor_id, actor_name, actor_role, reason, snapshot)
"""
# The change event goes into the outbox in the same statement, hence the same transaction (see outbox.py).
_OUTBOX_INSERT = """
    INSERT INTO booking_outbox (event_type, booking, actor_id, actor_name, actor_role)
"""

# Calls with the same caller and request_id are serialised by a transaction-scoped advisory lock taken before
# the insert (the insert reads from `gate`), so a later one finds the earlier one's row; without it, concurrent
# duplicates deadlock between the request_id index and the overlap constraint.
CREATE_SQL = f"""
WITH gate AS (
    SELECT count(*) FROM (
        SELECT pg_advisory_xact_lock(hashtextextended($8::text || '/' || $9::text, 0)) WHERE $9::text IS NOT NULL
    ) locked
), ins AS (
    INSERT INTO bookings (id, customer_id, provider_id, service_id, start_time, end_time, notes,
                          created_by, request_id)
    SELECT $1::uuid, $2::text, $3::text, $4::text, $5::timestamptz, $6::timestamptz, $7::text, $8::text, $9::text
      FROM gate
    ON CONFLICT (created_by, request_id) WHERE request_id IS NOT NULL DO NOTHING
    RETURNING *
), audit AS (
    {_AUDIT_INSERT}
    SELECT $10, ins.id, 'CREATED', $8, $11, $12, '', to_jsonb(ins) FROM ins
), event AS (
    {_OUTBOX_INSERT}
    SELECT 'CREATED', to_jsonb(ins), $8, $11, $12 FROM ins
)
SELECT * FROM ins
"""

DELETE_SQL = f"""
WITH upd AS (
    UPDATE bookings
       SET delete_time = now(), update_time = now(), version = version + 1,
           deleted_by_id = $2, deleted_by_name = $3, deleted_by_role = $4, deletion_reason = $5
     WHERE id = $1 AND delete_time IS NULL
       AND ($6::text IS NULL OR customer_id = $6)
       AND ($7::text IS NULL OR provider_id = $7)
       AND ($8::bigint IS NULL OR version = $8)
    RETURNING *
), audit AS (
    {_AUDIT_INSERT}
    SELECT $9, upd.id, 'DELETED', $2, $3, $4, $5, to_jsonb(upd) FROM upd
), event AS (
    {_OUTBOX_INSERT}
    SELECT 'DELETED', to_jsonb(upd), $2, $3, $4 FROM upd
)
SELECT * FROM upd
"""

RESTORE_SQL = f"""
WITH upd AS (
    UPDATE bookings
       SET delete_time = NULL, update_time = now(), version = version + 1,
           deleted_by_id = NULL, deleted_by_name = NULL, deleted_by_role = NULL, deletion_reason = ''
     WHERE id = $1 AND delete_time IS NOT NULL AND ($2::bigint IS NULL OR version = $2)
    RETURNING *
), audit AS (
    {_AUDIT_INSERT}
    SELECT $3, upd.id, 'RESTORED', $4, $5, $6, '', to_jsonb(upd) FROM upd
), event AS (
    {_OUTBOX_INSERT}
    SELECT 'RESTORED', to_jsonb(upd), $4, $5, $6 FROM upd
)
SELECT * FROM upd
"""


def _hard_delete_sql(victims: str) -> str:
    """Permanently delete the soft-deleted bookings `victims` selects, erase every snapshot of them from the
    audit trail (its entries remain) and record a HARD_DELETED entry and event for each (the event carries the
    booking as it was, so subscribers can tell whose it was).

    Parameters: $1-$3 actor id, name and role, $4 reason, $5 audit entry id (NULL: a fresh one per booking);
    `victims` uses $6 onwards.
    """
    return f"""
WITH victims AS ({victims}),
del AS (
    DELETE FROM bookings b USING victims v WHERE b.id = v.id AND b.delete_time IS NOT NULL RETURNING b.*
), erase AS (  -- one row; the final SELECT joins it, so it runs (a SELECT CTE runs only when read)
    SELECT booking_audit_erase_snapshots(array_agg(id)) AS erased FROM del
), audit AS (
    {_AUDIT_INSERT}
    SELECT coalesce($5::uuid, gen_random_uuid()), del.id, 'HARD_DELETED', $1, $2, $3, $4, NULL FROM del
), event AS (
    {_OUTBOX_INSERT}
    SELECT 'HARD_DELETED', to_jsonb(del), $1, $2, $3 FROM del
)
SELECT del.id FROM del, erase
"""


HARD_DELETE_SQL = _hard_delete_sql("SELECT $6::uuid AS id")
PURGE_BATCH_SQL = _hard_delete_sql(
    "SELECT id FROM bookings WHERE delete_time < $6 ORDER BY delete_time, id LIMIT $7 FOR UPDATE SKIP LOCKED"
)

PURGE_PREVIEW_SQL = """
SELECT count(*) OVER () AS total, id FROM bookings
 WHERE delete_time < $1 ORDER BY delete_time, id LIMIT $2
"""


@cache
def list_sql(*, customer: bool, provider: bool, after: bool, deleted: bool | None) -> str:
    """One statement per filter combination, so each gets a plan that can use its index.

    Parameters, in order: limit, then customer_id, provider_id and the keyset position where used.
    deleted: None lists every booking, False only active ones, True only deleted ones (newest deletion first).
    """
    where, params = [], ["$1"]

    def param() -> str:
        params.append(f"${len(params) + 1}")
        return params[-1]

    if deleted is False:
        where.append("delete_time IS NULL")
    elif deleted is True:
        where.append("delete_time IS NOT NULL")
    if customer:
        where.append(f"customer_id = {param()}")
    if provider:
        where.append(f"provider_id = {param()}")
    if deleted is True:
        if after:
            where.append(f"(delete_time, id) < ({param()}, {param()})")
        order = "delete_time DESC, id DESC"
    else:
        if after:
            where.append(f"(start_time, id) > ({param()}, {param()})")
        order = "start_time, id"
    condition = " AND ".join(where) or "TRUE"
    return f"SELECT * FROM bookings WHERE {condition} ORDER BY {order} LIMIT $1"


class Storage:
    def __init__(self, config: StorageConfig) -> None:
        self._config = config
        self._pool: asyncpg.Pool[Record] | None = None

    @property
    def pool(self) -> asyncpg.Pool[Record]:
        if self._pool is None:
            raise Unavailable("the database is not connected yet; retry later", reason="DATABASE_UNAVAILABLE")
        return self._pool

    async def open(self) -> None:
        self._pool = await asyncpg.create_pool(
            self._config.dsn,
            min_size=self._config.min_connections,
            max_size=self._config.max_connections,
            command_timeout=self._config.command_timeout,
            server_settings={"timezone": "UTC", "application_name": "booking_service"},
            reset=release_connection,
        )

    async def close(self) -> None:
        """Close the pool, waiting up to `close_seconds` for connections in use, then terminating them."""
        timeout = self._config.close_seconds
        if self._pool is None:
            return
        pool, self._pool = self._pool, None
        try:
            async with asyncio.timeout(timeout):
                await pool.close()
        except TimeoutError:
            log.warning("database connections still busy after %.0fs; terminating them", timeout)
            pool.terminate()
        except BaseException:
            pool.terminate()
            raise

    async def prepare_schema(self, owner_dsn: str | None) -> list[str]:
        """Apply pending migrations (as the owner, when given) and return what was applied (see schema.py)."""
        async with self.pool.acquire() as conn:
            return await schema.prepare(conn, owner_dsn)

    async def ping(self) -> bool:
        try:
            async with self.pool.acquire(timeout=self._config.acquire_timeout) as conn:
                await conn.fetchval("SELECT 1", timeout=self._config.acquire_timeout)
        except (*LOST_CONNECTION, asyncpg.PostgresError):
            return False
        return True

    async def notify(self, channel: str) -> None:
        """Send a notification on `channel`, best effort (a listener that misses it has its own backstop)."""
        try:
            async with self.pool.acquire(timeout=self._config.acquire_timeout) as conn:
                await conn.execute("SELECT pg_notify($1, '')", channel)
        except (*LOST_CONNECTION, asyncpg.PostgresError, Unavailable) as exc:
            log.debug("notification on %s not sent: %s", channel, type(exc).__name__)

    async def _acquire(self) -> Connection:
        try:
            conn: Connection = await self.pool.acquire(timeout=self._config.acquire_timeout)
        except asyncpg.PostgresError as exc:
            if isinstance(exc, CONNECTION_ERRORS):
                raise
            # The server refused a new connection (a database not accepting connections, a role or database
            # that is gone): as unavailable as a server that is down, not a bug.
            raise DatabaseRefused(f"the database refused a connection ({exc.sqlstate})") from exc
        return conn

    async def _run(
        self,
        work: Callable[[Connection], Awaitable[T]],
        *,
        committed: Callable[[Connection], Awaitable[T | None]] | None = None,
    ) -> T:
        """Run `work` on a pooled connection, retrying transient failures a bounded number of times.

        `committed` tells, after a lost connection, whether the lost attempt committed (and its result).
        """
        last: Exception | None = None
        uncertain = False
        backoff = Backoff(self._config.retry_backoff, 1.0)
        for attempt in range(self._config.attempts):
            if attempt:
                await backoff.sleep()
            try:
                conn = await self._acquire()
                try:
                    if uncertain and committed is not None:
                        earlier = await committed(conn)
                        if earlier is not None:
                            return earlier
                    return await work(conn)
                except (asyncpg.InterfaceError, asyncpg.InternalClientError) as exc:
                    # The connection closed under us, or its protocol state broke because the server ended it
                    # mid-operation: a lost connection, never to be reused. (Other InterfaceErrors, such as
                    # DataError, are bugs.)
                    if not (conn.is_closed() or isinstance(exc, asyncpg.InternalClientError)):
                        raise
                    conn.terminate()
                    raise asyncpg.ConnectionDoesNotExistError("connection lost") from exc
                finally:
                    await self.pool.release(conn)
            except RETRYABLE_ROLLBACK as exc:
                last = exc
            except CONNECTION_ERRORS as exc:
                last, uncertain = exc, True
            log.warning("database attempt %d failed: %s", attempt + 1, type(last).__name__)
        if isinstance(last, RETRYABLE_ROLLBACK):
            raise Aborted("the change conflicted with a concurrent one; retry", reason="CONCURRENT_MODIFICATION")
        raise Unavailable("the database is unavailable; retry later", reason="DATABASE_UNAVAILABLE") from last

    # --- reads -----------------------------------------------------------------------------------------------

    async def get(self, booking_id: uuid.UUID) -> Booking | None:
        async def work(conn: Connection) -> Booking | None:
            record = await conn.fetchrow("SELECT * FROM bookings WHERE id = $1", booking_id)
            return booking_from_record(record) if record else None

        return await self._run(work)

    async def list_bookings(self, query: ListQuery, *, deleted: bool | None) -> list[Booking]:
        sql = list_sql(
            customer=query.customer_id is not None,
            provider=query.provider_id is not None,
            after=query.after is not None,
            deleted=deleted,
        )
        args: list[Any] = [query.limit]
        args.extend(value for value in (query.customer_id, query.provider_id) if value is not None)
        if query.after is not None:
            args.extend(query.after)

        async def work(conn: Connection) -> list[Booking]:
            records = await conn.fetch(sql, *args)
            return [booking_from_record(r) for r in records]

        return await self._run(work)

    async def list_audit(self, booking_id: uuid.UUID, after_seq: int, limit: int) -> list[AuditEntry]:
        async def work(conn: Connection) -> list[AuditEntry]:
            records = await conn.fetch(
                "SELECT * FROM booking_audit WHERE booking_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                booking_id,
                after_seq,
                limit,
            )
            return [audit_from_record(r) for r in records]

        return await self._run(work)

    # --- writes ----------------------------------------------------------------------------------------------

    async def _booking_of_op(self, conn: Connection, op_id: uuid.UUID) -> Booking | None:
        record = await conn.fetchrow(
            "SELECT b.* FROM booking_audit a JOIN bookings b ON b.id = a.booking_id WHERE a.id = $1", op_id
        )
        return booking_from_record(record) if record else None

    async def create(
        self, new: NewBooking, *, booking_id: uuid.UUID, op_id: uuid.UUID, actor: Actor, request_id: str | None
    ) -> tuple[Booking, bool]:
        """Insert a booking; returns it and whether this call created it (False: an earlier request_id's)."""

        async def by_request(conn: Connection) -> Booking | None:
            if request_id is None:
                return None
            record = await conn.fetchrow(
                "SELECT * FROM bookings WHERE created_by = $1 AND request_id = $2", actor.id, request_id
            )
            return booking_from_record(record) if record else None

        async def work(conn: Connection) -> tuple[Booking, bool]:
            try:
                record = await conn.fetchrow(
                    CREATE_SQL,
                    booking_id,
                    new.customer_id,
                    new.provider_id,
                    new.service_id,
                    new.start_time,
                    new.end_time,
                    new.notes,
                    actor.id,
                    request_id,
                    op_id,
                    actor.name,
                    actor.role.value,
                )
            except asyncpg.ExclusionViolationError as exc:
                # A concurrent call with the same request_id may hold the slot: that is its result, not a clash.
                earlier = await by_request(conn)
                if earlier is not None:
                    return earlier, False
                raise AlreadyExists(
                    "the provider already has a booking overlapping this time", reason="SLOT_UNAVAILABLE"
                ) from exc
            if record is not None:
                return booking_from_record(record), True
            earlier = await by_request(conn)
            if earlier is None:  # the earlier booking was hard-deleted in between; let the retry decide
                raise asyncpg.SerializationError("request_id conflict vanished")
            return earlier, False

        async def committed(conn: Connection) -> tuple[Booking, bool] | None:
            booking = await self._booking_of_op(conn, op_id)
            return (booking, True) if booking else None

        return await self._run(work, committed=committed)

    async def soft_delete(
        self,
        booking_id: uuid.UUID,
        *,
        op_id: uuid.UUID,
        actor: Actor,
        reason: str,
        scope_customer: str | None,
        scope_provider: str | None,
        version: int | None,
    ) -> Booking | None:
        """Soft-delete if active, within scope and at `version`; None if nothing matched."""

        async def work(conn: Connection) -> Booking | None:
            record = await conn.fetchrow(
                DELETE_SQL,
                booking_id,
                actor.id,
                actor.name,
                actor.role.value,
                reason,
                scope_customer,
                scope_provider,
                version,
                op_id,
            )
            return booking_from_record(record) if record else None

        return await self._run(work, committed=lambda conn: self._booking_of_op(conn, op_id))

    async def restore(
        self, booking_id: uuid.UUID, *, op_id: uuid.UUID, actor: Actor, version: int | None
    ) -> Booking | None:
        async def work(conn: Connection) -> Booking | None:
            try:
                record = await conn.fetchrow(
                    RESTORE_SQL, booking_id, version, op_id, actor.id, actor.name, actor.role.value
                )
            except asyncpg.ExclusionViolationError as exc:
                raise FailedPrecondition(
                    "the booking's slot has been taken since it was deleted", reason="SLOT_UNAVAILABLE"
                ) from exc
            return booking_from_record(record) if record else None

        return await self._run(work, committed=lambda conn: self._booking_of_op(conn, op_id))

    async def hard_delete(self, booking_id: uuid.UUID, *, op_id: uuid.UUID, actor: Actor) -> bool:
        async def work(conn: Connection) -> bool:
            deleted = await conn.fetchval(
                HARD_DELETE_SQL, actor.id, actor.name, actor.role.value, "", op_id, booking_id
            )
            return deleted is not None

        async def committed(conn: Connection) -> bool | None:
            found = await conn.fetchval("SELECT 1 FROM booking_audit WHERE id = $1", op_id)
            return True if found else None

        return await self._run(work, committed=committed)

    async def purge_preview(self, deleted_before: datetime, sample: int) -> tuple[int, list[str]]:
        async def work(conn: Connection) -> tuple[int, list[str]]:
            records = await conn.fetch(PURGE_PREVIEW_SQL, deleted_before, sample)
            total = records[0]["total"] if records else 0
            return total, [str(r["id"]) for r in records]

        return await self._run(work)

    async def purge(
        self, deleted_before: datetime, *, actor: Actor, reason: str, batch: int, sample: int
    ) -> tuple[int, list[str]]:
        """Hard-delete, batch by batch, every booking soft-deleted before `deleted_before`."""
        count, ids = 0, list[str]()
        while True:

            async def work(conn: Connection) -> Sequence[Record]:
                return await conn.fetch(
                    PURGE_BATCH_SQL, actor.id, actor.name, actor.role.value, reason, None, deleted_before, batch
                )

            records = await self._run(work)
            count += len(records)
            ids.extend(str(r["id"]) for r in records[: max(0, sample - len(ids))])
            if len(records) < batch:
                return count, ids
