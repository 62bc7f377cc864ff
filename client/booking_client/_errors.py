"""The errors a BookingClient raises: one tree, each carrying what the server said.

    BookingError                    code, reason, message, domain, metadata, field_violations
    ├── InvalidArgument             INVALID_ARGUMENT (field_violations name each bad field)
    ├── Unauthenticated             UNAUTHENTICATED (missing, expired, malformed or forged token)
    ├── PermissionDenied            PERMISSION_DENIED (NotOwnBooking, AdminOnly)
    ├── NotFound                    NOT_FOUND (absent, or not visible to the caller)
    ├── Conflict                    ALREADY_EXISTS / ABORTED / FAILED_PRECONDITION
    │   ├── SlotUnavailable         the provider already has a booking then
    │   ├── EtagMismatch            the booking changed since its etag was read
    │   ├── BookingNotDeleted       restore or hard-delete of an active booking
    │   ├── BookingDeleted          update of a soft-deleted booking (an admin's; others get NotFound)
    │   ├── HoldExpired             confirm, move or restore of a hold after its expire_time
    │   ├── NotHeld                 confirm of a booking that is not a hold (already confirmed)
    │   └── RequestIdReused         a request_id reused for a different booking
    ├── CursorExpired               OUT_OF_RANGE: the event stream cannot continue from the cursor
    ├── SlowConsumer                RESOURCE_EXHAUSTED: the subscriber fell too far behind
    ├── TooManyStreams              RESOURCE_EXHAUSTED: the caller (or the instance) holds its bound of streams
    ├── TooManyHolds                RESOURCE_EXHAUSTED: the customer or provider holds its bound of holds
    ├── Unavailable                 UNAVAILABLE (retried for idempotent calls before it is raised)
    └── DeadlineExceeded            DEADLINE_EXCEEDED

`from_rpc_error` maps a grpc error to the most specific class: by ErrorInfo reason first, then by status code.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.rpc import error_details_pb2, status_pb2

STATUS_DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class BookingError(Exception):
    """An RPC failed: `code` (grpc.StatusCode), `reason` (the ErrorInfo reason, "" if none), `message`, and the
    ErrorInfo's `domain` and `metadata`, the BadRequest's `field_violations`, the response's `request_id`."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        reason: str = "",
        domain: str = "",
        metadata: dict[str, str] | None = None,
        field_violations: tuple[FieldViolation, ...] = (),
        request_id: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.reason = reason
        self.domain = domain
        self.metadata = metadata or {}
        self.field_violations = field_violations
        self.request_id = request_id

    def __str__(self) -> str:
        head = f"{self.code.name}" + (f" ({self.reason})" if self.reason else "") + f": {self.message}"
        violations = "; ".join(f"{v.field}: {v.description}" for v in self.field_violations)
        return head + (f" [{violations}]" if violations else "")


class InvalidArgument(BookingError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class Unauthenticated(BookingError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(BookingError):
    code = grpc.StatusCode.PERMISSION_DENIED


class NotOwnBooking(PermissionDenied):
    pass


class AdminOnly(PermissionDenied):
    pass


class NotFound(BookingError):
    code = grpc.StatusCode.NOT_FOUND


class Conflict(BookingError):
    code = grpc.StatusCode.ABORTED


class SlotUnavailable(Conflict):
    pass


class EtagMismatch(Conflict):
    pass


class BookingNotDeleted(Conflict):
    pass


class BookingDeleted(Conflict):
    pass


class RequestIdReused(Conflict):
    pass


class HoldExpired(Conflict):
    """metadata `expire_time`: when the hold stopped holding its slot."""


class NotHeld(Conflict):
    pass


class CursorExpired(BookingError):
    code = grpc.StatusCode.OUT_OF_RANGE


class SlowConsumer(BookingError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class TooManyStreams(BookingError):
    """The instance holds as many streams of this caller (metadata `scope`: caller), of everyone (instance) or
    health watches (health) as its bound (metadata `bound`) allows."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class TooManyHolds(BookingError):
    """The customer or the provider (metadata `per`) has as many unexpired holds as its bound (`bound`)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(BookingError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(BookingError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


BY_REASON: dict[str, type[BookingError]] = {
    "SLOT_UNAVAILABLE": SlotUnavailable,
    "ETAG_MISMATCH": EtagMismatch,
    "BOOKING_NOT_DELETED": BookingNotDeleted,
    "BOOKING_DELETED": BookingDeleted,
    "REQUEST_ID_REUSED": RequestIdReused,
    "HOLD_EXPIRED": HoldExpired,
    "NOT_HELD": NotHeld,
    "TOO_MANY_HOLDS": TooManyHolds,
    "NOT_OWN_BOOKING": NotOwnBooking,
    "ADMIN_ONLY": AdminOnly,
    "CURSOR_EXPIRED": CursorExpired,
    "SLOW_CONSUMER": SlowConsumer,
    "TOO_MANY_STREAMS": TooManyStreams,
}
BY_CODE: dict[grpc.StatusCode, type[BookingError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: Conflict,
    grpc.StatusCode.ABORTED: Conflict,
    grpc.StatusCode.FAILED_PRECONDITION: Conflict,
    grpc.StatusCode.OUT_OF_RANGE: CursorExpired,
    grpc.StatusCode.RESOURCE_EXHAUSTED: SlowConsumer,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
}


def from_rpc_error(error: grpc.aio.AioRpcError, request_id: str = "") -> BookingError:
    """The BookingError for a failed call, with the details the server attached (google.rpc.Status)."""
    code = error.code()
    message = error.details() or code.name
    reason, domain, metadata, violations = "", "", dict[str, str](), tuple[FieldViolation, ...]()
    for key, value in error.trailing_metadata() or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            reason, domain, metadata, violations = _details(value)
    cls = BY_REASON.get(reason) or BY_CODE.get(code, BookingError)
    return cls(
        message,
        code=code,
        reason=reason,
        domain=domain,
        metadata=metadata,
        field_violations=violations,
        request_id=request_id,
    )


def _details(raw: bytes) -> tuple[str, str, dict[str, str], tuple[FieldViolation, ...]]:
    status = status_pb2.Status.FromString(raw)
    reason, domain, metadata, violations = "", "", dict[str, str](), tuple[FieldViolation, ...]()
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations = tuple(FieldViolation(v.field, v.description) for v in bad.field_violations)
    return reason, domain, metadata, violations
