"""One method per operation: applies the access rules of `domain`, then asks storage to do the work."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from booking_service import pagination
from booking_service.availability import Schedule, Span, free_spans, outside, slot_starts
from booking_service.domain import (
    MAX_FREE_INTERVALS,
    PURGE_SAMPLE_SIZE,
    AuditEntry,
    Booking,
    BookingChange,
    NewBooking,
    Page,
    SlotTaken,
    TimesOutOfOrder,
    is_admin,
    may_see,
)
from booking_service.ports import BookingStore, ChangeSignal, ListQuery
from svc_common.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from svc_common.principal import Principal, Role
from svc_common.scope import Scope

PURGE_BATCH = 500
# How far before now a user's or provider's booking may start (clocks that disagree a little, a booking made as
# it begins); earlier is IN_THE_PAST, except for admins (a backfill, noted in the audit entry).
PAST_LEEWAY = timedelta(minutes=1)


def not_found(booking_id: uuid.UUID) -> NotFound:
    return NotFound(f"booking {booking_id} not found", reason="BOOKING_NOT_FOUND")


def require_admin(principal: Principal, what: str) -> None:
    if not is_admin(principal):
        raise PermissionDenied(f"only admins may {what}", reason="ADMIN_ONLY")


def _narrow(scope: str | None, wanted: str | None) -> tuple[bool, str | None]:
    """Combine what the caller may see with a request filter: (anything left?, effective filter)."""
    if scope is None:
        return True, wanted
    if wanted is None or wanted == scope:
        return True, scope
    return False, None


def _etag_mismatch() -> Aborted:
    return Aborted("the booking has changed; read it again for its current etag", reason="ETAG_MISMATCH")


def _slot_taken() -> AlreadyExists:
    return AlreadyExists(
        "the provider already has a booking overlapping this time (with the buffers around each)",
        reason="SLOT_UNAVAILABLE",
    )


@dataclass(frozen=True)
class Availability:
    """ListAvailableSlots' answer."""

    free: list[Span]
    slot_starts: list[int]  # microseconds since 1970 (availability.micros)
    time_zone: str


def _time_key(key: list[str | int] | None) -> tuple[datetime, uuid.UUID] | None:
    if key is None:
        return None
    try:
        position, booking_id = datetime.fromisoformat(str(key[0])), uuid.UUID(str(key[1]))
        if position.tzinfo is None:
            raise ValueError("page token time without a time zone")
    except ValueError as exc:
        raise pagination.invalid_token() from exc
    return position, booking_id


class BookingUseCases:
    def __init__(
        self,
        storage: BookingStore,
        changes: ChangeSignal,
        page_tokens: pagination.PageTokens,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._storage = storage
        self._changes = changes
        self._tokens = page_tokens
        self._clock = clock

    def _not_in_the_past(self, principal: Principal, start: datetime) -> str:
        """Refuse a booking that would start before now (PAST_LEEWAY allowed) to users and providers; for an admin
        (a backfill), the note its audit entry keeps ("" when it does not start in the past)."""
        now = self._clock()
        if start >= now - PAST_LEEWAY:
            return ""
        if is_admin(principal):
            return f"backfill: starts {start.isoformat()}, before the time it was written"
        raise FailedPrecondition(
            f"a booking may not start in the past (before {(now - PAST_LEEWAY).isoformat()}); an admin may backfill",
            reason="IN_THE_PAST",
            metadata={"start_time": start.isoformat(), "now": now.isoformat()},
        )

    def _available(
        self, principal: Principal, schedule: Schedule | None, start: datetime, end: datetime, *, ignore: bool
    ) -> str:
        """Nothing, if [start, end) is inside the provider's availability; for an admin who ignores it, the note
        its audit entry keeps; else FAILED_PRECONDITION OUTSIDE_AVAILABILITY naming the rule."""
        rule = outside(schedule, start, end, self._clock())
        if rule is None or schedule is None:
            return ""
        if ignore:
            return f"outside the provider's availability ({rule.value}), ignored by an admin"
        provider_id = schedule.provider_id
        raise FailedPrecondition(
            f"the time is outside provider {provider_id}'s availability ({rule.value}); "
            "ListAvailableSlots shows when it may be booked",
            reason="OUTSIDE_AVAILABILITY",
            metadata={"rule": rule.value, "time_zone": schedule.time_zone},
        )

    async def create(
        self, principal: Principal, new: NewBooking, request_id: str | None, *, ignore_availability: bool = False
    ) -> Booking:
        if principal.role is Role.USER and new.customer_id != principal.id:
            raise PermissionDenied("users may only book for themselves", reason="NOT_OWN_BOOKING")
        if principal.role is Role.PROVIDER and new.provider_id != principal.id:
            raise PermissionDenied("providers may only create their own bookings", reason="NOT_OWN_BOOKING")
        note = self._not_in_the_past(principal, new.start_time)
        if ignore_availability and not is_admin(principal):
            raise PermissionDenied("only admins may ignore a provider's availability", reason="ADMIN_ONLY")
        schedule = await self._storage.schedule(new.provider_id)
        ignored = self._available(principal, schedule, new.start_time, new.end_time, ignore=ignore_availability)
        buffers = (schedule.buffer_before, schedule.buffer_after) if schedule else (timedelta(0), timedelta(0))
        try:
            booking, created = await self._storage.create(
                new,
                booking_id=uuid.uuid4(),
                op_id=uuid.uuid4(),
                actor=principal,
                request_id=request_id,
                note="; ".join(n for n in (note, ignored) if n),
                buffers=buffers,
            )
        except SlotTaken as exc:
            raise _slot_taken() from exc
        if created:
            self._changes.committed()
            return booking
        # A replay: it answers with what the caller may see now (a booking deleted since is NOT_FOUND, and its
        # deletion details are not shown), never more than GetBooking would.
        if not may_see(principal, booking):
            raise not_found(uuid.UUID(booking.id))
        if not booking.same_request(new):
            raise InvalidArgument(
                [FieldViolation("request_id", "already used by this caller for a different booking")],
                reason="REQUEST_ID_REUSED",
            )
        return booking

    async def get(self, principal: Principal, booking_id: uuid.UUID) -> Booking:
        booking = await self._storage.get(booking_id)
        if booking is None or not may_see(principal, booking):
            raise not_found(booking_id)
        return booking

    async def list_bookings(
        self,
        principal: Principal,
        *,
        customer_id: str | None,
        provider_id: str | None,
        show_deleted: bool,
        page_size: int,
        page_token: str,
        overlaps: tuple[datetime, datetime] | None = None,
    ) -> Page[Booking]:
        if show_deleted:
            require_admin(principal, "list deleted bookings")
        return await self._list_page(
            principal,
            "ListBookings",
            customer_id=customer_id,
            provider_id=provider_id,
            deleted=None if show_deleted else False,
            page_size=page_size,
            page_token=page_token,
            overlaps=overlaps,
        )

    async def list_deleted(
        self,
        principal: Principal,
        *,
        customer_id: str | None,
        provider_id: str | None,
        page_size: int,
        page_token: str,
    ) -> Page[Booking]:
        require_admin(principal, "list deleted bookings")
        return await self._list_page(
            principal,
            "ListDeletedBookings",
            customer_id=customer_id,
            provider_id=provider_id,
            deleted=True,
            page_size=page_size,
            page_token=page_token,
        )

    async def _list_page(
        self,
        principal: Principal,
        rpc: str,
        *,
        customer_id: str | None,
        provider_id: str | None,
        deleted: bool | None,
        page_size: int,
        page_token: str,
        overlaps: tuple[datetime, datetime] | None = None,
    ) -> Page[Booking]:
        limit = pagination.page_size(page_size)
        window = [t.isoformat() for t in overlaps] if overlaps else None
        query_id = pagination.fingerprint(
            rpc, principal.id, principal.role.value, customer_id, provider_id, deleted, *([window] if window else [])
        )
        after = _time_key(self._tokens.decode(page_token, query_id, (str, str)))
        scope = Scope.of(principal)
        any_customer, customer = _narrow(scope.customer_id, customer_id)
        any_provider, provider = _narrow(scope.provider_id, provider_id)
        if not (any_customer and any_provider):
            return Page([], "")
        query = ListQuery(customer_id=customer, provider_id=provider, after=after, limit=limit + 1, overlaps=overlaps)
        bookings = await self._storage.list_bookings(query, deleted=deleted)
        if len(bookings) <= limit:
            return Page(bookings, "")
        bookings = bookings[:limit]
        last = bookings[-1]
        position = last.delete_time if deleted is True else last.start_time
        assert position is not None
        return Page(bookings, self._tokens.encode(query_id, (position.isoformat(), last.id)))

    async def delete(self, principal: Principal, booking_id: uuid.UUID, *, reason: str, version: int | None) -> Booking:
        scope = Scope.of(principal)
        deleted = await self._storage.soft_delete(
            booking_id,
            op_id=uuid.uuid4(),
            actor=principal,
            reason=reason,
            scope_customer=scope.customer_id,
            scope_provider=scope.provider_id,
            version=version,
        )
        if deleted is not None:
            self._changes.committed()
            return deleted
        # Nothing matched: say why, without telling a caller about bookings it may not see.
        current = await self._storage.get(booking_id)
        if current is None or current.deleted or not scope.allows(current.customer_id, current.provider_id):
            raise not_found(booking_id)
        raise _etag_mismatch()

    async def update(
        self,
        principal: Principal,
        booking_id: uuid.UUID,
        change: BookingChange,
        *,
        version: int | None,
        request_id: str | None,
        ignore_availability: bool = False,
    ) -> Booking:
        """Change an active booking's time, service or notes: its customer, its provider or an admin may. A move
        must stay inside the provider's availability (read before the move: a concurrent move of the same
        booking may make the check see the other end as it was)."""
        scope = Scope.of(principal)
        note = self._not_in_the_past(principal, change.start_time) if change.start_time is not None else ""
        if ignore_availability and not is_admin(principal):
            raise PermissionDenied("only admins may ignore a provider's availability", reason="ADMIN_ONLY")
        if change.start_time is not None or change.end_time is not None:
            current, schedule = await self._storage.booking_with_schedule(booking_id)
            if current is not None and not current.deleted and scope.allows(current.customer_id, current.provider_id):
                start, end = change.start_time or current.start_time, change.end_time or current.end_time
                if start < end:  # else the update refuses the times themselves
                    ignored = self._available(principal, schedule, start, end, ignore=ignore_availability)
                    note = "; ".join(n for n in (note, ignored) if n)
        try:
            result = await self._storage.update(
                booking_id,
                change,
                op_id=uuid.uuid4(),
                actor=principal,
                scope_customer=scope.customer_id,
                scope_provider=scope.provider_id,
                version=version,
                request_id=request_id,
                note=note,
            )
        except SlotTaken as exc:
            raise _slot_taken() from exc
        except TimesOutOfOrder as exc:
            violation = (
                FieldViolation("booking.end_time", "must be after start_time")
                if change.end_time is not None
                else FieldViolation("booking.start_time", "must be before end_time")
            )
            raise InvalidArgument([violation]) from exc
        if result.updated is not None:
            self._changes.committed()
            return result.updated
        if result.prior_booking_id is not None:  # a repeat: the first call's result, as GetBooking shows it now
            if result.prior_booking_id != str(booking_id) or result.prior_digest != change.digest(str(booking_id)):
                raise InvalidArgument(
                    [FieldViolation("request_id", "already used by this caller for a different change")],
                    reason="REQUEST_ID_REUSED",
                )
            return await self.get(principal, booking_id)
        current = await self._storage.get(booking_id)
        if current is None or not scope.allows(current.customer_id, current.provider_id):
            raise not_found(booking_id)
        if current.deleted:
            if not is_admin(principal):
                raise not_found(booking_id)
            raise FailedPrecondition(
                f"booking {booking_id} is deleted; restore it before updating it", reason="BOOKING_DELETED"
            )
        raise _etag_mismatch()

    async def free_slots(
        self,
        principal: Principal,
        provider_id: str,
        start: datetime,
        end: datetime,
        duration: timedelta,
        step: timedelta | None = None,
    ) -> Availability:
        """The provider's free intervals in [start, end) where a booking of `duration` fits with the schedule's
        buffers, and the slot starts stepping by `step` (default `duration`) from each working range's start.
        Any caller may ask: the answer names no booking. More than MAX_FREE_INTERVALS of either is refused."""
        schedule, taken = await self._storage.availability(provider_id, start, end)
        free, working = free_spans(schedule, start, end, taken, self._clock(), duration)
        starts = slot_starts(free, working, duration, step or duration, MAX_FREE_INTERVALS + 1)
        if len(free) > MAX_FREE_INTERVALS or len(starts) > MAX_FREE_INTERVALS:
            raise InvalidArgument(
                [
                    FieldViolation(
                        "interval",
                        f"more than {MAX_FREE_INTERVALS} free intervals or slots: "
                        "ask for a shorter interval, a longer duration or a longer slot_step",
                    )
                ],
                reason="TOO_MANY_FREE_INTERVALS",
            )
        return Availability(free, starts, schedule.time_zone if schedule else "UTC")

    async def restore(self, principal: Principal, booking_id: uuid.UUID, *, version: int | None) -> Booking:
        require_admin(principal, "restore bookings")
        try:
            restored = await self._storage.restore(booking_id, op_id=uuid.uuid4(), actor=principal, version=version)
        except SlotTaken as exc:
            raise FailedPrecondition(
                "the booking's slot has been taken since it was deleted", reason="SLOT_UNAVAILABLE"
            ) from exc
        if restored is not None:
            self._changes.committed()
            return restored
        current = await self._storage.get(booking_id)
        if current is None:
            raise not_found(booking_id)
        if not current.deleted:
            raise AlreadyExists(f"booking {booking_id} is not deleted", reason="BOOKING_NOT_DELETED")
        raise _etag_mismatch()

    async def hard_delete(self, principal: Principal, booking_id: uuid.UUID) -> None:
        require_admin(principal, "hard-delete bookings")
        if await self._storage.hard_delete(booking_id, op_id=uuid.uuid4(), actor=principal):
            self._changes.committed()
            return
        current = await self._storage.get(booking_id)
        if current is None:
            raise not_found(booking_id)
        raise FailedPrecondition(
            f"booking {booking_id} is active; soft-delete it before hard-deleting it", reason="BOOKING_NOT_DELETED"
        )

    async def purge(self, principal: Principal, deleted_before: datetime, *, force: bool) -> tuple[int, list[str]]:
        require_admin(principal, "purge bookings")
        if not force:
            return await self._storage.purge_preview(deleted_before, PURGE_SAMPLE_SIZE)
        count, sample = await self._storage.purge(
            deleted_before,
            actor=principal,
            reason=f"purge of bookings deleted before {deleted_before.isoformat()}",
            batch=PURGE_BATCH,
            sample=PURGE_SAMPLE_SIZE,
        )
        if count:
            self._changes.committed()
        return count, sample

    async def list_audit(
        self, principal: Principal, booking_id: uuid.UUID, *, page_size: int, page_token: str
    ) -> Page[AuditEntry]:
        require_admin(principal, "read the audit trail")
        limit = pagination.page_size(page_size)
        query_id = pagination.fingerprint("ListBookingAuditEntries", str(booking_id))
        key = self._tokens.decode(page_token, query_id, (int,))
        after = int(key[0]) if key else 0
        entries = await self._storage.list_audit(booking_id, after, limit + 1)
        if not entries and key is None:
            raise not_found(booking_id)
        if len(entries) <= limit:
            return Page(entries, "")
        entries = entries[:limit]
        return Page(entries, self._tokens.encode(query_id, (entries[-1].seq,)))
