"""The SQL of bookings: every read and write, each a single statement (a data-modifying CTE writes the booking,
its audit entry and its change event in the outbox together), so it commits atomically with one round trip.

Every write carries the id of the audit entry it writes (`op_id`), so after a lost connection `Database.run`
can tell whether the lost attempt committed. Constraint violations become domain errors (`SlotTaken`); the use
cases choose the status.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from functools import cache
from typing import Any

import asyncpg

from booking_service.database import Connection, Database, Record
from booking_service.domain import Actor, AuditEntry, Booking, NewBooking, SlotTaken
from booking_service.ports import ListQuery
from booking_service.rows import audit_from_record, booking_from_record
from svc_common import tracing

_AUDIT_INSERT = """
    INSERT INTO booking_audit (id, booking_id, action, actor_id, actor_name, actor_role, reason, snapshot)
"""
# The change event goes into the outbox in the same statement, hence the same transaction (see outbox.py).
_OUTBOX_INSERT = """
    INSERT INTO booking_outbox (event_type, booking, actor_id, actor_name, actor_role, traceparent)
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
    SELECT 'CREATED', to_jsonb(ins), $8, $11, $12, $13::text FROM ins
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
    SELECT 'DELETED', to_jsonb(upd), $2, $3, $4, $10::text FROM upd
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
    SELECT 'RESTORED', to_jsonb(upd), $4, $5, $6, $7::text FROM upd
)
SELECT * FROM upd
"""


def _hard_delete_sql(victims: str) -> str:
    """Permanently delete the soft-deleted bookings `victims` selects, erase every snapshot of them from the
    audit trail (its entries remain) and their notes from their change events in the outbox (the relay replaces
    their entries in the Redis stream before it publishes the HARD_DELETED event), and record a HARD_DELETED entry
    and event for each (the event carries the booking as it was, but for its notes, so subscribers can tell whose
    it was).

    Parameters: $1-$3 actor id, name and role, $4 reason, $5 audit entry id (NULL: a fresh one per booking),
    $6 the writer's traceparent (NULL: none); `victims` uses $7 onwards.
    """
    return f"""
WITH victims AS ({victims}),
del AS (
    DELETE FROM bookings b USING victims v WHERE b.id = v.id AND b.delete_time IS NOT NULL RETURNING b.*
), erase AS (  -- one row each; the final SELECT joins them, so they run (a SELECT CTE runs only when read)
    SELECT booking_audit_erase_snapshots(array_agg(id)) AS erased FROM del
), redact AS (
    SELECT booking_events_erase_notes(array_agg(id)) AS redacted FROM del
), audit AS (
    {_AUDIT_INSERT}
    SELECT coalesce($5::uuid, gen_random_uuid()), del.id, 'HARD_DELETED', $1, $2, $3, $4, NULL FROM del
), event AS (
    {_OUTBOX_INSERT}
    SELECT 'HARD_DELETED', to_jsonb(del) || '{{"notes": ""}}', $1, $2, $3, $6::text FROM del
)
SELECT del.id FROM del, erase, redact
"""


HARD_DELETE_SQL = _hard_delete_sql("SELECT $7::uuid AS id")
PURGE_BATCH_SQL = _hard_delete_sql(
    "SELECT id FROM bookings WHERE delete_time < $7 ORDER BY delete_time, id LIMIT $8 FOR UPDATE SKIP LOCKED"
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
    """Bookings and their audit trail in PostgreSQL."""

    def __init__(self, db: Database) -> None:
        self._db = db

    # --- reads -----------------------------------------------------------------------------------------------

    async def get(self, booking_id: uuid.UUID) -> Booking | None:
        async def work(conn: Connection) -> Booking | None:
            record = await conn.fetchrow("SELECT * FROM bookings WHERE id = $1", booking_id)
            return booking_from_record(record) if record else None

        return await self._db.run(work)

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

        return await self._db.run(work)

    async def list_audit(self, booking_id: uuid.UUID, after_seq: int, limit: int) -> list[AuditEntry]:
        async def work(conn: Connection) -> list[AuditEntry]:
            records = await conn.fetch(
                "SELECT * FROM booking_audit WHERE booking_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                booking_id,
                after_seq,
                limit,
            )
            return [audit_from_record(r) for r in records]

        return await self._db.run(work)

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
                    tracing.traceparent(),
                )
            except asyncpg.ExclusionViolationError as exc:
                # A concurrent call with the same request_id may hold the slot: that is its result, not a clash.
                earlier = await by_request(conn)
                if earlier is not None:
                    return earlier, False
                raise SlotTaken() from exc
            if record is not None:
                return booking_from_record(record), True
            earlier = await by_request(conn)
            if earlier is None:  # the earlier booking was hard-deleted in between; let the retry decide
                raise asyncpg.SerializationError("request_id conflict vanished")
            return earlier, False

        async def committed(conn: Connection) -> tuple[Booking, bool] | None:
            booking = await self._booking_of_op(conn, op_id)
            return (booking, True) if booking else None

        return await self._db.run(work, committed=committed)

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
                tracing.traceparent(),
            )
            return booking_from_record(record) if record else None

        return await self._db.run(work, committed=lambda conn: self._booking_of_op(conn, op_id))

    async def restore(
        self, booking_id: uuid.UUID, *, op_id: uuid.UUID, actor: Actor, version: int | None
    ) -> Booking | None:
        async def work(conn: Connection) -> Booking | None:
            try:
                record = await conn.fetchrow(
                    RESTORE_SQL,
                    booking_id,
                    version,
                    op_id,
                    actor.id,
                    actor.name,
                    actor.role.value,
                    tracing.traceparent(),
                )
            except asyncpg.ExclusionViolationError as exc:
                raise SlotTaken() from exc
            return booking_from_record(record) if record else None

        return await self._db.run(work, committed=lambda conn: self._booking_of_op(conn, op_id))

    async def hard_delete(self, booking_id: uuid.UUID, *, op_id: uuid.UUID, actor: Actor) -> bool:
        async def work(conn: Connection) -> bool:
            deleted = await conn.fetchval(
                HARD_DELETE_SQL, actor.id, actor.name, actor.role.value, "", op_id, tracing.traceparent(), booking_id
            )
            return deleted is not None

        async def committed(conn: Connection) -> bool | None:
            found = await conn.fetchval("SELECT 1 FROM booking_audit WHERE id = $1", op_id)
            return True if found else None

        return await self._db.run(work, committed=committed)

    async def purge_preview(self, deleted_before: datetime, sample: int) -> tuple[int, list[str]]:
        async def work(conn: Connection) -> tuple[int, list[str]]:
            records = await conn.fetch(PURGE_PREVIEW_SQL, deleted_before, sample)
            total = records[0]["total"] if records else 0
            return total, [str(r["id"]) for r in records]

        return await self._db.run(work)

    async def purge(
        self, deleted_before: datetime, *, actor: Actor, reason: str, batch: int, sample: int
    ) -> tuple[int, list[str]]:
        """Hard-delete, batch by batch, every booking soft-deleted before `deleted_before`."""
        count, ids = 0, list[str]()
        while True:

            async def work(conn: Connection) -> Sequence[Record]:
                return await conn.fetch(
                    PURGE_BATCH_SQL,
                    actor.id,
                    actor.name,
                    actor.role.value,
                    reason,
                    None,
                    tracing.traceparent(),
                    deleted_before,
                    batch,
                )

            records = await self._db.run(work)
            count += len(records)
            ids.extend(str(r["id"]) for r in records[: max(0, sample - len(ids))])
            if len(records) < batch:
                return count, ids
