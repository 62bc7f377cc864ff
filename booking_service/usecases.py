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
    BookingState,
    HoldTerms,
    NewBooking,
    Page,
    SlotTaken,
    TimesOutOfOrder,
    TooManyHolds,
    confirm_digest,
    is_admin,
    may_see,
)
from booking_service.ports import BookingStore, ChangeSignal, ListQuery, UpdateResult
from svc_common.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)
from svc_common.principal import Principal, Role
from svc_common.scope import Scope

PURGE_BATCH = 500
SWEEP_BATCH = 500  # expired holds retired per statement of the sweep
# How far before now a user's or provider's booking may start (clocks that disagree a little, a booking made as
# it begins); earlier is IN_THE_PAST, except for admins (a backfill, noted in the audit entry).
PAST_LEEWAY = timedelta(minutes=1)


def not_found(booking_id: uuid.UUID) -> NotFound:
    return NotFound(f"booking {booking_id} not found", reason="BOOKING_NOT_FOUND")


def require_admin(principal: Principal, what: str) -> None:
    if not is_admin(principal):
        raise PermissionDenied(f"only admins may {what}", reason="ADMIN_ONLY")


def refuse_providers(principal: Principal) -> None:
    """A hold is made and confirmed by its customer (or an admin for it), never by the provider."""
    if principal.role is Role.PROVIDER:
        raise PermissionDenied("a hold is made and confirmed by its customer or an admin", reason="NOT_OWN_HOLD")


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


def _hold_expired(booking: Booking) -> FailedPrecondition:
    assert booking.expire_time is not None
    return FailedPrecondition(
        f"the hold expired at {booking.expire_time.isoformat()}; its slot is free again",
        reason="HOLD_EXPIRED",
        metadata={"expire_time": booking.expire_time.isoformat()},
    )


@dataclass(frozen=True)
class HoldLimits:
    """The bounds of unexpired holds (HOLDS_MAX_PER_CUSTOMER, HOLDS_MAX_PER_PROVIDER)."""

    per_customer: int = 5
    per_provider: int = 1000


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
        hold_limits: HoldLimits = HoldLimits(),
    ) -> None:
        self._storage = storage
        self._changes = changes
        self._tokens = page_tokens
        self._clock = clock
        self._hold_limits = hold_limits

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
        return await self._insert(principal, new, request_id, ignore_availability=ignore_availability, hold=None)

    async def hold(
        self,
        principal: Principal,
        new: NewBooking,
        ttl: timedelta,
        request_id: str | None,
        *,
        ignore_availability: bool = False,
    ) -> Booking:
        """A hold on the slot for `ttl`: a user holds for itself, an admin for anyone; a provider may not (a
        hold is its customer's, who confirms it)."""
        refuse_providers(principal)
        if principal.role is Role.USER and new.customer_id != principal.id:
            raise PermissionDenied("users may only hold slots for themselves", reason="NOT_OWN_BOOKING")
        limits = self._hold_limits
        terms = HoldTerms(ttl, limits.per_customer, limits.per_provider)
        return await self._insert(principal, new, request_id, ignore_availability=ignore_availability, hold=terms)

    async def _insert(
        self,
        principal: Principal,
        new: NewBooking,
        request_id: str | None,
        *,
        ignore_availability: bool,
        hold: HoldTerms | None,
    ) -> Booking:
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
                hold=hold,
            )
        except SlotTaken as exc:
            raise _slot_taken() from exc
        except TooManyHolds as exc:
            raise ResourceExhausted(
                f"the {exc.who} already has {exc.bound} unexpired holds, the most allowed; "
                "confirm or delete one, or wait for one to expire",
                reason="TOO_MANY_HOLDS",
                metadata={"bound": str(exc.bound), "per": exc.who},
            ) from exc
        if created:
            self._changes.committed()
            return booking
        # A replay: it answers with what the caller may see now (a booking deleted since is NOT_FOUND, and its
        # deletion details are not shown), never more than GetBooking would.
        if not may_see(principal, booking):
            raise not_found(uuid.UUID(booking.id))
        # A CreateBooking repeating a HoldSlot's request_id while the hold stands asked for something else (a
        # HoldSlot repeated after its hold was confirmed gets the booking it became).
        if not booking.same_request(new) or (hold is None and booking.state is BookingState.HELD):
            raise InvalidArgument(
                [FieldViolation("request_id", "already used by this caller for a different booking")],
                reason="REQUEST_ID_REUSED",
            )
        return booking

    async def confirm(
        self,
        principal: Principal,
        booking_id: uuid.UUID,
        *,
        version: int | None,
        request_id: str | None,
        notes: str | None,
    ) -> Booking:
        """Turn an unexpired hold into a confirmed booking: its customer or an admin may."""
        refuse_providers(principal)
        scope = Scope.of(principal)
        digest = confirm_digest(str(booking_id), notes) if request_id is not None else None
        result = await self._storage.confirm(
            booking_id,
            op_id=uuid.uuid4(),
            actor=principal,
            scope_customer=scope.customer_id,
            version=version,
            notes=notes,
            request_id=request_id,
            digest=digest,
        )
        done = await self._done(principal, booking_id, result, digest)
        if done is not None:
            return done
        # Nothing matched: say why (by the database's clock, which decided), without telling a caller about
        # bookings it may not see.
        current = await self._storage.get(booking_id)
        if current is None or not scope.allows(current.customer_id, current.provider_id):
            raise not_found(booking_id)
        if current.deleted:
            if current.retired_by_expiry:
                raise _hold_expired(current)
            if not is_admin(principal):
                raise not_found(booking_id)
            raise FailedPrecondition(
                f"booking {booking_id} is deleted; restore it before confirming it", reason="BOOKING_DELETED"
            )
        if current.state is not BookingState.HELD:
            raise FailedPrecondition(f"booking {booking_id} is not a hold", reason="NOT_HELD")
        if version is not None and version != current.version:
            raise _etag_mismatch()
        raise _hold_expired(current)  # an active hold at the right version: only its expiry refused it

    async def _done(
        self, principal: Principal, booking_id: uuid.UUID, result: UpdateResult, digest: str | None
    ) -> Booking | None:
        """What a change of one booking answers when it changed it, or when it repeats an earlier call's
        request_id (that call's result, as GetBooking shows it now; REQUEST_ID_REUSED if that call asked for
        something else); None when nothing matched."""
        if result.updated is not None:
            self._changes.committed()
            return result.updated
        if result.prior_booking_id is None:
            return None
        if result.prior_booking_id != str(booking_id) or result.prior_digest != digest:
            raise InvalidArgument(
                [FieldViolation("request_id", "already used by this caller for a different change")],
                reason="REQUEST_ID_REUSED",
            )
        return await self.get(principal, booking_id)

    async def sweep_holds(self) -> int:
        """Retire every hold whose expire_time has come (batch by batch); returns how many."""
        total = 0
        while True:
            count = await self._storage.sweep_holds(SWEEP_BATCH)
            total += count
            if count:
                self._changes.committed()
            if count < SWEEP_BATCH:
                return total

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
        done = await self._done(principal, booking_id, result, change.digest(str(booking_id)))
        if done is not None:
            return done
        current = await self._storage.get(booking_id)
        if current is None or not scope.allows(current.customer_id, current.provider_id):
            raise not_found(booking_id)
        if current.deleted:
            if not is_admin(principal):
                raise not_found(booking_id)
            raise FailedPrecondition(
                f"booking {booking_id} is deleted; restore it before updating it", reason="BOOKING_DELETED"
            )
        if current.state is BookingState.HELD and version in (None, current.version):
            raise _hold_expired(current)  # what else refused it: the hold's expiry, by the database's clock
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
        if current.state is BookingState.HELD and version in (None, current.version):
            raise _hold_expired(current)  # what else refused it: the hold's expiry, by the database's clock
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
