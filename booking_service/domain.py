"""Bookings, their audit trail, and who may see or change them. Imports nothing from grpc, asyncpg or redis."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, TypeVar

from svc_common.principal import Principal, Role
from svc_common.scope import Scope

ERROR_DOMAIN = "booking.v1"

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
MAX_NOTES_CHARS = 2000
MAX_REASON_CHARS = 1000
PURGE_SAMPLE_SIZE = 100
# Booking times: from the Unix epoch up to (not including) the year 9999, in whole microseconds. Far from
# the ends of what PostgreSQL and Python can represent (0001 and 9999-12-31 become +-infinity in asyncpg).
EARLIEST_TIME = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_TIME = datetime(9999, 1, 1, tzinfo=UTC)


class SlotTaken(Exception):
    """Another active booking of the provider overlaps the time asked for."""


# Who did something: the caller as its token named it (id, name, role), kept with the change.
Actor = Principal


@dataclass(frozen=True, slots=True)
class NewBooking:
    customer_id: str
    provider_id: str
    service_id: str
    start_time: datetime
    end_time: datetime
    notes: str


@dataclass(frozen=True, slots=True)
class Booking:
    id: str
    customer_id: str
    provider_id: str
    service_id: str
    start_time: datetime
    end_time: datetime
    notes: str
    create_time: datetime
    update_time: datetime
    version: int
    delete_time: datetime | None = None
    deleted_by: Actor | None = None
    deletion_reason: str = ""

    @property
    def deleted(self) -> bool:
        return self.delete_time is not None

    @property
    def etag(self) -> str:
        return f'"{self.version}"'

    def same_request(self, new: NewBooking) -> bool:
        """Whether `new` asks for this booking (used to spot a reused request_id)."""
        return (
            self.customer_id == new.customer_id
            and self.provider_id == new.provider_id
            and self.service_id == new.service_id
            and self.start_time == new.start_time
            and self.end_time == new.end_time
            and self.notes == new.notes
        )


class AuditAction(enum.Enum):
    CREATED = "CREATED"
    DELETED = "DELETED"
    RESTORED = "RESTORED"
    HARD_DELETED = "HARD_DELETED"


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: str
    booking_id: str
    action: AuditAction
    actor: Actor
    reason: str
    create_time: datetime
    snapshot: Booking | None
    seq: int  # position in the audit trail, for paging


def is_admin(principal: Principal) -> bool:
    return principal.role is Role.ADMIN


def may_see(principal: Principal, booking: Booking) -> bool:
    """Users see their own bookings, providers those assigned to them, admins all; only admins see deleted ones."""
    if booking.deleted and not is_admin(principal):
        return False
    return Scope.of(principal).allows(booking.customer_id, booking.provider_id)


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    next_page_token: str
