"""What the use cases need of storage: the `BookingStore` protocol and the query it takes. The use cases
(usecases.py) call it and storage (storage.py) implements it; both import this module, neither the other."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from booking_service.availability import Schedule, Span
from booking_service.domain import AuditEntry, Booking, BookingChange, HoldTerms, NewBooking
from svc_common.principal import Principal


@dataclass(frozen=True)
class ListQuery:
    """A page of bookings; each filter None means unrestricted."""

    customer_id: str | None
    provider_id: str | None
    after: tuple[datetime, uuid.UUID] | None
    limit: int
    overlaps: tuple[datetime, datetime] | None = None  # [start, end): bookings whose time overlaps it


@dataclass(frozen=True)
class UpdateResult:
    """What an update found: the booking it changed, or (a repeated request_id) the booking and digest of the
    first call with it, or neither (nothing matched: the use case asks why)."""

    updated: Booking | None = None
    prior_booking_id: str | None = None
    prior_digest: str | None = None


class BookingStore(Protocol):
    """What the use cases need of storage (booking_service.storage.Storage is the one implementation)."""

    async def get(self, booking_id: uuid.UUID) -> Booking | None: ...
    async def list_bookings(self, query: ListQuery, *, deleted: bool | None) -> list[Booking]: ...
    async def list_audit(self, booking_id: uuid.UUID, after_seq: int, limit: int) -> list[AuditEntry]: ...
    async def create(
        self,
        new: NewBooking,
        *,
        booking_id: uuid.UUID,
        op_id: uuid.UUID,
        actor: Principal,
        request_id: str | None,
        note: str = "",
        buffers: tuple[timedelta, timedelta] = ...,
        hold: HoldTerms | None = None,
    ) -> tuple[Booking, bool]: ...
    async def soft_delete(
        self,
        booking_id: uuid.UUID,
        *,
        op_id: uuid.UUID,
        actor: Principal,
        reason: str,
        scope_customer: str | None,
        scope_provider: str | None,
        version: int | None,
    ) -> Booking | None: ...
    async def restore(
        self, booking_id: uuid.UUID, *, op_id: uuid.UUID, actor: Principal, version: int | None
    ) -> Booking | None: ...
    async def update(
        self,
        booking_id: uuid.UUID,
        change: BookingChange,
        *,
        op_id: uuid.UUID,
        actor: Principal,
        scope_customer: str | None,
        scope_provider: str | None,
        version: int | None,
        request_id: str | None,
        note: str = "",
    ) -> UpdateResult: ...
    async def confirm(
        self,
        booking_id: uuid.UUID,
        *,
        op_id: uuid.UUID,
        actor: Principal,
        scope_customer: str | None,
        version: int | None,
        notes: str | None,
        request_id: str | None,
        digest: str | None,
    ) -> UpdateResult: ...
    async def sweep_holds(self, batch: int) -> int: ...
    async def availability(
        self, provider_id: str, start: datetime, end: datetime
    ) -> tuple[Schedule | None, list[Span]]: ...
    async def booking_with_schedule(self, booking_id: uuid.UUID) -> tuple[Booking | None, Schedule | None]: ...
    async def schedule(self, provider_id: str) -> Schedule | None: ...
    async def schedule_request_done(self, actor_id: str, request_id: str) -> str | None: ...
    async def put_schedule(
        self, schedule: Schedule, *, expected_version: int | None, actor: Principal, request_id: str | None
    ) -> Schedule | None: ...
    async def hard_delete(self, booking_id: uuid.UUID, *, op_id: uuid.UUID, actor: Principal) -> bool: ...
    async def purge_preview(self, deleted_before: datetime, sample: int) -> tuple[int, list[str]]: ...
    async def purge(
        self, deleted_before: datetime, *, actor: Principal, reason: str, batch: int, sample: int
    ) -> tuple[int, list[str]]: ...


class ChangeSignal(Protocol):
    """Told after a change committed (its event is in the outbox), so the relay publishes it promptly."""

    def committed(self) -> None: ...
