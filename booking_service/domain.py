"""Bookings, their audit trail, and who may see or change them. Imports nothing from grpc, asyncpg or redis."""

from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
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


# A hold (HoldSlot) lasts its ttl: 0 asks for the default.
DEFAULT_HOLD_TTL = timedelta(minutes=5)
MIN_HOLD_TTL = timedelta(seconds=1)
MAX_HOLD_TTL = timedelta(minutes=15)

MAX_SLOTS_WINDOW = timedelta(days=31)  # ListAvailableSlots looks at most this far ...
MAX_FREE_INTERVALS = 10_000  # ... and answers with at most this many intervals (about 300 KB)


class SlotTaken(Exception):
    """Another active booking of the provider overlaps the time asked for."""


class RequestRepeated(Exception):
    """The caller already made a change under this request_id."""


class TimesOutOfOrder(Exception):
    """An update would leave the booking ending at or before it starts."""


class TooManyHolds(Exception):
    """A new hold would take a customer or a provider past its bound of unexpired holds."""

    def __init__(self, who: str, bound: int) -> None:
        super().__init__(who, bound)
        self.who = who  # "customer" or "provider"
        self.bound = bound


class BookingState(enum.Enum):
    CONFIRMED = "CONFIRMED"
    HELD = "HELD"  # a hold: it occupies its slot until its expire_time


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
    state: BookingState = BookingState.CONFIRMED
    expire_time: datetime | None = None  # set while HELD (and kept once an expired hold is retired)

    @property
    def deleted(self) -> bool:
        return self.delete_time is not None

    @property
    def retired_by_expiry(self) -> bool:
        """Whether this is a hold deleted because its time was up (not one deleted before it expired)."""
        return (
            self.state is BookingState.HELD
            and self.expire_time is not None
            and self.delete_time is not None
            and self.expire_time <= self.delete_time
        )

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


@dataclass(frozen=True, slots=True)
class HoldTerms:
    """What a new hold is given: how long it lasts, and the bounds of unexpired holds it must stay within."""

    ttl: timedelta
    max_per_customer: int
    max_per_provider: int


def confirm_digest(booking_id: str, notes: str | None) -> str:
    """What a repeat of the same ConfirmBooking (request_id) must ask for again."""
    return hashlib.sha256(json.dumps(["confirm", booking_id, notes]).encode()).hexdigest()


# What UpdateBooking may change (the paths of its update mask), in this order.
UPDATABLE = ("start_time", "end_time", "service_id", "notes")


@dataclass(frozen=True, slots=True)
class BookingChange:
    """An update of a booking: each field None is kept."""

    start_time: datetime | None = None
    end_time: datetime | None = None
    service_id: str | None = None
    notes: str | None = None

    @property
    def paths(self) -> list[str]:
        return [path for path in UPDATABLE if getattr(self, path) is not None]

    def digest(self, booking_id: str) -> str:
        """What a repeat of the same request (request_id) must ask for again."""
        values = [booking_id, *(str(getattr(self, path)) for path in UPDATABLE)]
        return hashlib.sha256(json.dumps(values).encode()).hexdigest()


class AuditAction(enum.Enum):
    CREATED = "CREATED"
    DELETED = "DELETED"
    RESTORED = "RESTORED"
    HARD_DELETED = "HARD_DELETED"
    UPDATED = "UPDATED"
    HELD = "HELD"
    CONFIRMED = "CONFIRMED"
    EXPIRED = "EXPIRED"


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
    update_mask: tuple[str, ...] = ()  # UPDATED: the fields changed
    previous_time: tuple[datetime, datetime] | None = None  # UPDATED: the booking's time before


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
