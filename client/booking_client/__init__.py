"""A client of the booking backend for internal services, and `bookingctl`, the operators' command line.

    from booking_client import BookingClient

    async with BookingClient("booking:50051", "notify:50052", token=get_token) as client:
        booking = await client.create_booking(provider_id="p1", start_time=start, end_time=end)
        async for event in client.watch(provider_id="p1"):
            ...

The messages are the contract's own (booking_api.booking.v1, booking_api.notify.v1, generated from the .proto
files shipped in booking_api/protos/). Errors: booking_client._errors, re-exported here.
"""

from booking_client._client import AvailableSlots, BookingClient, PurgeResult
from booking_client._errors import (
    AdminOnly,
    BookingDeleted,
    BookingError,
    BookingNotDeleted,
    Conflict,
    CursorExpired,
    DeadlineExceeded,
    EtagMismatch,
    FieldViolation,
    HoldExpired,
    InvalidArgument,
    NotFound,
    NotHeld,
    NotOwnBooking,
    PermissionDenied,
    RequestIdReused,
    SlotUnavailable,
    SlowConsumer,
    TooManyHolds,
    TooManyStreams,
    Unauthenticated,
    Unavailable,
)
from booking_client._informer import Change, Changes, Informer
from booking_client._options import Backoff, Tls
from booking_client._watch import Watch

__all__ = [
    "AdminOnly",
    "AvailableSlots",
    "Backoff",
    "BookingClient",
    "BookingDeleted",
    "BookingError",
    "BookingNotDeleted",
    "Change",
    "Changes",
    "Conflict",
    "CursorExpired",
    "DeadlineExceeded",
    "EtagMismatch",
    "FieldViolation",
    "HoldExpired",
    "Informer",
    "InvalidArgument",
    "NotFound",
    "NotHeld",
    "NotOwnBooking",
    "PermissionDenied",
    "PurgeResult",
    "RequestIdReused",
    "SlotUnavailable",
    "SlowConsumer",
    "Tls",
    "TooManyHolds",
    "TooManyStreams",
    "Unauthenticated",
    "Unavailable",
    "Watch",
]
