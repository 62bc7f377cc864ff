"""Checks on request fields, shared by both services; each problem becomes a google.rpc.BadRequest field
violation."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from svc_common.errors import FieldViolation, InvalidArgument

MAX_ID_CHARS = 128  # customer, provider, service and request ids

# Timestamp's valid range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
_MIN_SECONDS, _MAX_SECONDS = -62135596800, 253402300799


def _has_control(value: str) -> bool:
    return any(ord(ch) < 32 or ord(ch) == 127 for ch in value)


class Checker:
    """Collects violations while turning a request into domain values; `done()` raises them all at once."""

    def __init__(self) -> None:
        self.violations: list[FieldViolation] = []

    def fail(self, field: str, description: str) -> None:
        self.violations.append(FieldViolation(field, description))

    def identifier(self, field: str, value: str, *, required: bool = True) -> str | None:
        if not value:
            if required:
                self.fail(field, "required")
            return None
        if len(value) > MAX_ID_CHARS:
            self.fail(field, f"at most {MAX_ID_CHARS} characters")
        elif _has_control(value) or value != value.strip():
            self.fail(field, "must not contain control characters or surrounding spaces")
        return value

    def booking_id(self, field: str, value: str) -> uuid.UUID:
        if not value:
            self.fail(field, "required")
        elif len(value) > MAX_ID_CHARS:
            self.fail(field, f"at most {MAX_ID_CHARS} characters")
        else:
            try:
                return uuid.UUID(value)
            except ValueError:
                self.fail(field, "must be a booking id (a UUID)")
        return uuid.UUID(int=0)

    def text(self, field: str, value: str, max_chars: int) -> str:
        if len(value) > max_chars:
            self.fail(field, f"at most {max_chars} characters")
        elif "\x00" in value:
            self.fail(field, "must not contain NUL characters")
        return value

    def timestamp(self, field: str, present: bool, value: Timestamp) -> datetime:
        if not present:
            self.fail(field, "required")
        elif not (_MIN_SECONDS <= value.seconds <= _MAX_SECONDS) or not (0 <= value.nanos < 1_000_000_000):
            self.fail(field, "not a valid timestamp")
        else:
            return value.ToDatetime(tzinfo=UTC)
        return datetime.min.replace(tzinfo=UTC)

    def time_within(
        self, field: str, present: bool, value: Timestamp, earliest: datetime, latest: datetime
    ) -> datetime:
        """A time in [earliest, latest) with whole microseconds (what PostgreSQL stores exactly), else a violation:
        a value it would round, or store as +-infinity, never reaches the database."""
        known = len(self.violations)
        when = self.timestamp(field, present, value)
        if len(self.violations) > known:  # missing or not a timestamp at all
            return when
        if value.nanos % 1000:
            self.fail(field, "must have whole microseconds (nanos a multiple of 1000)")
        elif not earliest <= when < latest:
            self.fail(field, f"must be from {earliest.isoformat()} up to (not including) {latest.isoformat()}")
        return when

    def etag(self, field: str, value: str) -> int | None:
        """Our etags are a quoted version number; empty means unconditional."""
        if not value:
            return None
        digits = value.removeprefix("W/").strip('"')
        if not (digits.isascii() and digits.isdigit()) or len(digits) > 18:
            self.fail(field, "not an etag returned by this service")
            return None
        return int(digits)

    def done(self) -> None:
        if self.violations:
            raise InvalidArgument(self.violations)
