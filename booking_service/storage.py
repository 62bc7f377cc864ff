"""Bookings in PostgreSQL: every read and write, each a single statement of sql.py (a data-modifying CTE writes
the booking, its audit entry and its change event in the outbox together), so it commits atomically with one
round trip.

Every write carries the id of the audit entry it writes (`op_id`), so after a lost connection `Database.run`
can tell whether the lost attempt committed. Constraint violations become domain errors (`SlotTaken`); the use
cases choose the status.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from booking_service.availability import Schedule, Span
from booking_service.database import Connection, Database, Record
from booking_service.domain import (
    Actor,
    AuditEntry,
    Booking,
    BookingChange,
    HoldTerms,
    NewBooking,
    RequestRepeated,
    SlotTaken,
    TimesOutOfOrder,
    TooManyHolds,
)
from booking_service.ports import ListQuery, UpdateResult
from booking_service.rows import (
    audit_from_record,
    booking_from_record,
    schedule_from_json,
    schedule_from_record,
    schedule_json,
)
from booking_service.sql import (
    AVAILABILITY_SQL,
    BOOKING_WITH_SCHEDULE_SQL,
    CONFIRM_SQL,
    CREATE_SQL,
    DELETE_SQL,
    HARD_DELETE_SQL,
    HOLD_SQL,
    PRIOR_REQUEST_SQL,
    PURGE_BATCH_SQL,
    PURGE_PREVIEW_SQL,
    PUT_SCHEDULE_SQL,
    RESTORE_SQL,
    SCHEDULE_REQUEST_SQL,
    SCHEDULE_SQL,
    SWEEP_HOLDS_SQL,
    UPDATE_SQL,
    list_sql,
)
from svc_common import tracing


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
            overlaps=query.overlaps is not None,
            after=query.after is not None,
            deleted=deleted,
        )
        args: list[Any] = [query.limit]
        args.extend(value for value in (query.customer_id, query.provider_id) if value is not None)
        if query.overlaps is not None:
            args.extend(query.overlaps)
        if query.after is not None:
            args.extend(query.after)

        async def work(conn: Connection) -> list[Booking]:
            records = await conn.fetch(sql, *args)
            return [booking_from_record(r) for r in records]

        return await self._db.run(work)

    async def availability(
        self, provider_id: str, start: datetime, end: datetime
    ) -> tuple[Schedule | None, list[Span]]:
        """The provider's schedule, and what its bookings take of [start, end) widened by the schedule's buffers
        (each booking's reach, merged), in one round trip."""

        async def work(conn: Connection) -> tuple[Schedule | None, list[Span]]:
            record = await conn.fetchrow(AVAILABILITY_SQL, provider_id, start, end)
            assert record is not None  # one row, always
            raw = record["schedule"]
            schedule = schedule_from_json(json.loads(raw)) if raw is not None else None
            return schedule, list(zip(record["starts"], record["ends"], strict=True))

        return await self._db.run(work)

    async def booking_with_schedule(self, booking_id: uuid.UUID) -> tuple[Booking | None, Schedule | None]:
        async def work(conn: Connection) -> tuple[Booking | None, Schedule | None]:
            record = await conn.fetchrow(BOOKING_WITH_SCHEDULE_SQL, booking_id)
            if record is None:
                return None, None
            raw = record["schedule"]
            return booking_from_record(record), schedule_from_json(json.loads(raw)) if raw is not None else None

        return await self._db.run(work)

    async def schedule(self, provider_id: str) -> Schedule | None:
        async def work(conn: Connection) -> Schedule | None:
            record = await conn.fetchrow(SCHEDULE_SQL, provider_id)
            return schedule_from_record(record) if record else None

        return await self._db.run(work)

    async def schedule_request_done(self, actor_id: str, request_id: str) -> str | None:
        """The provider whose schedule this caller changed under `request_id`, if it did."""

        async def work(conn: Connection) -> str | None:
            provider: str | None = await conn.fetchval(SCHEDULE_REQUEST_SQL, actor_id, request_id)
            return provider

        return await self._db.run(work)

    async def put_schedule(
        self, schedule: Schedule, *, expected_version: int | None, actor: Actor, request_id: str | None
    ) -> Schedule | None:
        """Write `schedule` if the stored one still has `expected_version` (None: if there is none yet); None if
        not. A request_id this caller used before raises RequestRepeated."""
        weekly, overrides = schedule_json(schedule)

        async def work(conn: Connection) -> Schedule | None:
            try:
                record = await conn.fetchrow(
                    PUT_SCHEDULE_SQL,
                    schedule.provider_id,
                    schedule.time_zone,
                    weekly,
                    overrides,
                    schedule.buffer_before,
                    schedule.buffer_after,
                    schedule.minimum_notice,
                    schedule.booking_horizon,
                    expected_version,
                    actor.id,
                    actor.name,
                    actor.role.value,
                    request_id,
                    tracing.traceparent(),
                )
            except asyncpg.UniqueViolationError as exc:
                raise RequestRepeated() from exc
            return schedule_from_record(record) if record else None

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
        self,
        new: NewBooking,
        *,
        booking_id: uuid.UUID,
        op_id: uuid.UUID,
        actor: Actor,
        request_id: str | None,
        note: str = "",
        buffers: tuple[timedelta, timedelta] = (timedelta(0), timedelta(0)),
        hold: HoldTerms | None = None,
    ) -> tuple[Booking, bool]:
        """Insert a booking (with `hold`, a hold on those terms); returns it and whether this call created it
        (False: an earlier request_id's). `note` goes into its audit entry's reason; `buffers` (before, after)
        stay with it, for the overlap constraint. Expired holds in its way are retired in the same statement."""
        sql, terms = CREATE_SQL, tuple[object, ...]()
        if hold is not None:
            sql, terms = HOLD_SQL, (hold.ttl, hold.max_per_customer, hold.max_per_provider)

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
                    sql,
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
                    note,
                    *buffers,
                    *terms,
                )
            except asyncpg.ExclusionViolationError as exc:
                # A concurrent call with the same request_id may hold the slot: that is its result, not a clash.
                earlier = await by_request(conn)
                if earlier is not None:
                    return earlier, False
                raise SlotTaken() from exc
            assert record is not None  # one row, always
            if record["id"] is not None:
                return booking_from_record(record), True
            earlier = await by_request(conn)
            if earlier is not None:
                return earlier, False
            if hold is not None:
                by_customer, by_provider = record["holds"]
                if by_customer >= hold.max_per_customer:
                    raise TooManyHolds("customer", hold.max_per_customer)
                if by_provider >= hold.max_per_provider:
                    raise TooManyHolds("provider", hold.max_per_provider)
            raise asyncpg.SerializationError("request_id conflict vanished")  # hard-deleted in between: retry

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

    async def update(
        self,
        booking_id: uuid.UUID,
        change: BookingChange,
        *,
        op_id: uuid.UUID,
        actor: Actor,
        scope_customer: str | None,
        scope_provider: str | None,
        version: int | None,
        request_id: str | None,
        note: str = "",
    ) -> UpdateResult:
        """Change the fields of `change` if the booking is active, within scope and at `version`; `note` goes
        into its audit entry's reason."""
        args = (
            booking_id,
            change.start_time,
            change.end_time,
            change.service_id,
            change.notes,
            scope_customer,
            scope_provider,
            version,
            op_id,
            actor.id,
            actor.name,
            actor.role.value,
            change.paths,
            tracing.traceparent(),
            request_id,
            change.digest(str(booking_id)) if request_id is not None else None,
            note,
        )

        async def attempt(conn: Connection) -> Record | None:
            try:
                return await conn.fetchrow(UPDATE_SQL, *args)
            except asyncpg.ExclusionViolationError as exc:
                raise SlotTaken() from exc
            except asyncpg.CheckViolationError as exc:
                if exc.constraint_name == "bookings_time_order":
                    raise TimesOutOfOrder() from exc
                raise

        async def work(conn: Connection) -> UpdateResult:
            try:
                record = await attempt(conn)
            except asyncpg.UniqueViolationError:  # a concurrent repeat of the request committed first
                record = await attempt(conn)
            assert record is not None  # one row, always
            if record["id"] is not None:
                return UpdateResult(updated=booking_from_record(record))
            if record["prior_booking_id"] is not None:
                prior = str(record["prior_booking_id"])
                return UpdateResult(prior_booking_id=prior, prior_digest=record["prior_digest"])
            return UpdateResult()

        async def committed(conn: Connection) -> UpdateResult | None:
            booking = await self._booking_of_op(conn, op_id)
            return UpdateResult(updated=booking) if booking else None

        return await self._db.run(work, committed=committed)

    async def confirm(
        self,
        booking_id: uuid.UUID,
        *,
        op_id: uuid.UUID,
        actor: Actor,
        scope_customer: str | None,
        version: int | None,
        notes: str | None,
        request_id: str | None,
        digest: str | None,
    ) -> UpdateResult:
        """Confirm an active, unexpired hold within scope and at `version` (notes None: kept)."""
        args = (
            booking_id,
            version,
            scope_customer,
            notes,
            op_id,
            actor.id,
            actor.name,
            actor.role.value,
            tracing.traceparent(),
            request_id,
            digest,
        )

        async def work(conn: Connection) -> UpdateResult:
            try:
                record = await conn.fetchrow(CONFIRM_SQL, *args)
            except asyncpg.UniqueViolationError:  # a concurrent repeat of the request committed first
                record = await conn.fetchrow(CONFIRM_SQL, *args)
            assert record is not None  # one row, always
            if record["id"] is not None:
                return UpdateResult(updated=booking_from_record(record))
            prior_id, prior_digest = record["prior_booking_id"], record["prior_digest"]
            if prior_id is None and request_id is not None:
                # A repeat that committed after this statement's snapshot was taken: read again.
                found = await conn.fetchrow(PRIOR_REQUEST_SQL, actor.id, request_id)
                if found is not None:
                    prior_id, prior_digest = found["booking_id"], found["request_digest"]
            if prior_id is not None:
                return UpdateResult(prior_booking_id=str(prior_id), prior_digest=prior_digest)
            return UpdateResult()

        async def committed(conn: Connection) -> UpdateResult | None:
            booking = await self._booking_of_op(conn, op_id)
            return UpdateResult(updated=booking) if booking else None

        return await self._db.run(work, committed=committed)

    async def sweep_holds(self, batch: int) -> int:
        """Retire up to `batch` expired holds; returns how many."""

        async def work(conn: Connection) -> int:
            count: int = await conn.fetchval(SWEEP_HOLDS_SQL, batch)
            return count

        return await self._db.run(work)

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
