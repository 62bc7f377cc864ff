"""The error tree both services raise, free of gRPC.

    ServiceError                 (reason: UPPER_SNAKE_CASE, message: safe for callers)
    ├── InvalidArgument          bad input; carries field violations
    ├── Unauthenticated          missing, expired, malformed or forged token
    ├── PermissionDenied         the caller's role may never do this
    ├── NotFound                 absent, or not visible to the caller
    ├── AlreadyExists
    ├── FailedPrecondition
    ├── Aborted                  concurrency conflict (stale etag, serialization failure)
    ├── OutOfRange
    ├── ResourceExhausted
    └── Unavailable              a dependency is down; retry later

The protocol edge (`svc_common.status`, used by the interceptor) maps each class to one status code, once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class ServiceError(Exception):
    default_reason = "ERROR"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata = metadata or {}


class InvalidArgument(ServiceError):
    default_reason = "INVALID_ARGUMENT"

    def __init__(
        self,
        violations: Sequence[FieldViolation],
        *,
        message: str | None = None,
        reason: str | None = None,
    ) -> None:
        self.violations = tuple(violations)
        text = message or "; ".join(f"{v.field}: {v.description}" for v in self.violations)
        super().__init__(text or "invalid argument", reason=reason)


class Unauthenticated(ServiceError):
    default_reason = "UNAUTHENTICATED"


class PermissionDenied(ServiceError):
    default_reason = "PERMISSION_DENIED"


class NotFound(ServiceError):
    default_reason = "NOT_FOUND"


class AlreadyExists(ServiceError):
    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(ServiceError):
    default_reason = "FAILED_PRECONDITION"


class Aborted(ServiceError):
    default_reason = "ABORTED"


class OutOfRange(ServiceError):
    default_reason = "OUT_OF_RANGE"


class ResourceExhausted(ServiceError):
    default_reason = "RESOURCE_EXHAUSTED"


class Unavailable(ServiceError):
    default_reason = "UNAVAILABLE"


class CannotStart(Exception):
    """The service cannot start, for a reason that will not pass by itself (a start-up error, not an RPC's): the
    command line prints it in one line and exits with status 2, which stops every worker."""


class ListenError(CannotStart):
    """The server cannot listen on its address (in use, or not an address of this host)."""
