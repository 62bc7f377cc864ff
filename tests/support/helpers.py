"""Test helpers: tokens, a caller that acts with a role, booking factories and status-detail readers."""

from __future__ import annotations

import itertools
import time
import urllib.request
import uuid
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import jwt
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2, status_pb2
from prometheus_client.parser import text_string_to_metric_families

from booking_api.booking.v1 import booking_pb2, booking_pb2_grpc
from svc_common.auth import mint
from svc_common.principal import Role

JWT_SECRET = "tests-only-secret-0123456789abcdef-0123456789"
ERROR_DOMAIN = "booking.v1"
BASE_TIME = datetime(2031, 1, 6, 9, 0, tzinfo=UTC)
_slots = itertools.count()


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def ts(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def fresh_slot(hours: int = 1) -> tuple[datetime, datetime]:
    """A time range no other test uses (each call moves a week ahead)."""
    start = BASE_TIME + timedelta(weeks=next(_slots))
    return start, start + timedelta(hours=hours)


def token(role: str, sub: str, *, ttl: int = 3600, secret: str = JWT_SECRET) -> str:
    return mint(secret, sub=sub, name=f"{sub} name", role=Role(role), ttl_seconds=ttl)


def auth(role: str, sub: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token(role, sub)}"),)


class Caller:
    """The booking API as one caller (role and id) sees it."""

    def __init__(self, stub: booking_pb2_grpc.BookingServiceAsyncStub, role: str, sub: str) -> None:
        self.stub, self.role, self.id = stub, role, sub
        self.metadata = auth(role, sub)

    def call(self, rpc: str, request: Any) -> Awaitable[Any]:
        result: Awaitable[Any] = getattr(self.stub, rpc)(request, metadata=self.metadata, timeout=30)
        return result

    async def create(
        self,
        *,
        provider_id: str,
        customer_id: str = "",
        start: datetime | None = None,
        end: datetime | None = None,
        notes: str = "",
        request_id: str = "",
        service_id: str = "haircut",
    ) -> booking_pb2.Booking:
        if start is None or end is None:
            start, end = fresh_slot()
        response = await self.call(
            "CreateBooking",
            booking_pb2.CreateBookingRequest(
                booking=booking_pb2.Booking(
                    customer_id=customer_id,
                    provider_id=provider_id,
                    service_id=service_id,
                    start_time=ts(start),
                    end_time=ts(end),
                    notes=notes,
                ),
                request_id=request_id,
            ),
        )
        booking: booking_pb2.Booking = response.booking
        return booking

    async def hold(
        self,
        *,
        provider_id: str,
        start: datetime,
        end: datetime,
        customer_id: str = "",
        ttl: timedelta | None = None,
        request_id: str = "",
    ) -> booking_pb2.Booking:
        request = booking_pb2.HoldSlotRequest(
            booking=booking_pb2.Booking(
                customer_id=customer_id, provider_id=provider_id, service_id="haircut", start_time=ts(start),
                end_time=ts(end),
            ),
            request_id=request_id,
        )  # fmt: skip
        if ttl is not None:
            request.ttl.FromTimedelta(ttl)
        response = await self.call("HoldSlot", request)
        booking: booking_pb2.Booking = response.booking
        return booking

    async def confirm(
        self, booking_id: str, *, etag: str = "", request_id: str = "", notes: str = ""
    ) -> booking_pb2.Booking:
        response = await self.call(
            "ConfirmBooking",
            booking_pb2.ConfirmBookingRequest(booking_id=booking_id, etag=etag, request_id=request_id, notes=notes),
        )
        booking: booking_pb2.Booking = response.booking
        return booking

    async def get(self, booking_id: str) -> booking_pb2.Booking:
        response = await self.call("GetBooking", booking_pb2.GetBookingRequest(booking_id=booking_id))
        booking: booking_pb2.Booking = response.booking
        return booking

    async def delete(self, booking_id: str, reason: str = "", etag: str = "") -> booking_pb2.Booking:
        response = await self.call(
            "DeleteBooking", booking_pb2.DeleteBookingRequest(booking_id=booking_id, reason=reason, etag=etag)
        )
        booking: booking_pb2.Booking = response.booking
        return booking

    async def restore(self, booking_id: str, etag: str = "") -> booking_pb2.Booking:
        response = await self.call(
            "RestoreBooking", booking_pb2.RestoreBookingRequest(booking_id=booking_id, etag=etag)
        )
        booking: booking_pb2.Booking = response.booking
        return booking

    async def update(
        self,
        booking_id: str,
        *paths: str,
        start: datetime | None = None,
        end: datetime | None = None,
        service_id: str = "",
        notes: str = "",
        etag: str = "",
        request_id: str = "",
    ) -> booking_pb2.Booking:
        """UpdateBooking with the update mask `paths` (the values of the fields not named are sent but unused)."""
        booking = booking_pb2.Booking(id=booking_id, service_id=service_id, notes=notes, etag=etag)
        if start is not None:
            booking.start_time.CopyFrom(ts(start))
        if end is not None:
            booking.end_time.CopyFrom(ts(end))
        request = booking_pb2.UpdateBookingRequest(booking=booking, request_id=request_id)
        request.update_mask.paths.extend(paths)
        response = await self.call("UpdateBooking", request)
        updated: booking_pb2.Booking = response.booking
        return updated

    async def move(self, booking_id: str, start: datetime, end: datetime, etag: str = "") -> booking_pb2.Booking:
        return await self.update(booking_id, "start_time", "end_time", start=start, end=end, etag=etag)

    async def free(
        self, provider_id: str, start: datetime, end: datetime, duration: timedelta, step: timedelta | None = None
    ) -> list[tuple[datetime, datetime]]:
        return (await self.slots(provider_id, start, end, duration, step))[0]

    async def slots(
        self, provider_id: str, start: datetime, end: datetime, duration: timedelta, step: timedelta | None = None
    ) -> tuple[list[tuple[datetime, datetime]], list[datetime], str]:
        """ListAvailableSlots: the free intervals, the slot starts and the provider's time zone."""
        request = booking_pb2.ListAvailableSlotsRequest(provider_id=provider_id)
        request.interval.start_time.CopyFrom(ts(start))
        request.interval.end_time.CopyFrom(ts(end))
        request.duration.FromTimedelta(duration)
        if step is not None:
            request.slot_step.FromTimedelta(step)
        response = await self.call("ListAvailableSlots", request)
        free = [
            (i.start_time.ToDatetime(tzinfo=UTC), i.end_time.ToDatetime(tzinfo=UTC)) for i in response.free_intervals
        ]
        return free, [s.ToDatetime(tzinfo=UTC) for s in response.slot_starts], response.time_zone

    async def hard_delete(self, booking_id: str) -> str:
        response = await self.call("HardDeleteBooking", booking_pb2.HardDeleteBookingRequest(booking_id=booking_id))
        deleted: str = response.booking_id
        return deleted

    async def audit(self, booking_id: str) -> list[booking_pb2.AuditEntry]:
        response = await self.call(
            "ListBookingAuditEntries", booking_pb2.ListBookingAuditEntriesRequest(booking_id=booking_id)
        )
        return list(response.entries)

    async def list_all(self, rpc: str = "ListBookings", page_size: int = 0, **filters: Any) -> list[str]:
        """Every booking id over all pages."""
        request_type = getattr(booking_pb2, f"{rpc}Request")
        ids: list[str] = []
        token = ""
        while True:
            response = await self.call(rpc, request_type(page_size=page_size, page_token=token, **filters))
            ids.extend(b.id for b in response.bookings)
            token = response.next_page_token
            if not token:
                return ids


def details_bin(error: Any) -> bytes:
    """The serialized google.rpc.Status a failed call (a grpc.RpcError that is also a grpc.Call) carries."""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            return value
    raise AssertionError("no grpc-status-details-bin trailer")


def rpc_status(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            return status_pb2.Status.FromString(value)
    raise AssertionError(f"no rich status details on {error.code()}: {error.details()}")


def error_infos(error: grpc.aio.AioRpcError) -> list[error_details_pb2.ErrorInfo]:
    infos = []
    for detail in rpc_status(error).details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            infos.append(info)
    return infos


def field_violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    fields = {}
    for detail in rpc_status(error).details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields.update({v.field: v.description for v in bad.field_violations})
    return fields


def assert_status(
    error: grpc.aio.AioRpcError, code: grpc.StatusCode, reason: str | None = None, domain: str = ERROR_DOMAIN
) -> None:
    """`error` has status `code` and exactly one ErrorInfo of `domain` (and of `reason`, when given)."""
    assert error.code() == code, f"expected {code}, got {error.code()}: {error.details()}"
    infos = error_infos(error)
    assert len(infos) == 1, infos
    assert infos[0].domain == domain
    assert infos[0].reason.isupper() and " " not in infos[0].reason
    if reason is not None:
        assert infos[0].reason == reason


async def expect_error(
    call: Awaitable[Any], code: grpc.StatusCode, reason: str | None = None, domain: str = ERROR_DOMAIN
) -> grpc.aio.AioRpcError:
    """Await `call`, which must fail with `code` and exactly one ErrorInfo (of `reason`, when given)."""
    try:
        await call
    except grpc.aio.AioRpcError as error:
        assert_status(error, code, reason, domain)
        return error
    raise AssertionError(f"expected {code}, but the call succeeded")


# Authorization headers every authenticated RPC must refuse (None: no header at all).
BAD_HEADERS = {
    "missing": None,
    "not_bearer": "Basic dXNlcjpwYXNz",
    "empty_bearer": "Bearer ",
    "garbage": "Bearer not.a.jwt",
    "forged": f"Bearer {token('admin', 'mallory', secret='another-secret-of-sufficient-length-123')}",
    "expired": f"Bearer {token('user', 'alice', ttl=-60)}",
    "unknown_role": "Bearer "
    + jwt.encode({"sub": "a", "name": "a", "role": "root", "exp": int(time.time()) + 60}, JWT_SECRET, "HS256"),
    "no_exp": "Bearer " + jwt.encode({"sub": "a", "name": "a", "role": "user"}, JWT_SECRET, "HS256"),
    "no_sub": "Bearer " + jwt.encode({"name": "a", "role": "admin", "exp": int(time.time()) + 60}, JWT_SECRET, "HS256"),
    "nul_in_sub": "Bearer "
    + jwt.encode({"sub": "a\x00b", "name": "a", "role": "user", "exp": int(time.time()) + 60}, JWT_SECRET, "HS256"),
    "long_name": "Bearer "
    + jwt.encode({"sub": "a", "name": "n" * 257, "role": "user", "exp": int(time.time()) + 60}, JWT_SECRET, "HS256"),
    "exp_as_string": "Bearer "
    + jwt.encode({"sub": "a", "name": "a", "role": "user", "exp": str(int(time.time()) + 60)}, JWT_SECRET, "HS256"),
    "exp_huge_float": "Bearer "
    + jwt.encode({"sub": "a", "name": "a", "role": "user", "exp": 1e300}, JWT_SECRET, "HS256"),
    "exp_float": "Bearer "
    + jwt.encode({"sub": "a", "name": "a", "role": "user", "exp": time.time() + 60.5}, JWT_SECRET, "HS256"),
    "exp_beyond_9999": "Bearer "
    + jwt.encode({"sub": "a", "name": "a", "role": "user", "exp": 10**12}, JWT_SECRET, "HS256"),
    "alg_none": "Bearer "
    + jwt.encode({"sub": "a", "name": "a", "role": "admin", "exp": int(time.time()) + 60}, None, "none"),
}


def scrape(port: int) -> dict[str, float]:
    """The samples a service serves at /metrics on `port`, by name and sorted labels ("name{k=v,k=v}")."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def exported_names(port: int) -> set[str]:
    """Every metric name a service at `port` exports, with and without samples yet (a labelled counter no
    label has been counted for shows only its HELP and TYPE)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    names = set()
    for family in text_string_to_metric_families(text):
        names |= {family.name, f"{family.name}_total"} | {sample.name for sample in family.samples}
    return names
