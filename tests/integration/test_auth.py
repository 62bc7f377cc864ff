"""Authentication: every RPC but health and reflection needs a valid token."""

from __future__ import annotations

import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from booking_api.booking.v1 import booking_pb2, booking_pb2_grpc
from svc_common.auth import TokenVerifier
from svc_common.errors import Unauthenticated
from tests.support.helpers import BAD_HEADERS, JWT_SECRET, expect_error, token

RPCS = {
    "CreateBooking": booking_pb2.CreateBookingRequest(),
    "GetBooking": booking_pb2.GetBookingRequest(booking_id="x"),
    "ListBookings": booking_pb2.ListBookingsRequest(),
    "DeleteBooking": booking_pb2.DeleteBookingRequest(),
    "RestoreBooking": booking_pb2.RestoreBookingRequest(),
    "ListDeletedBookings": booking_pb2.ListDeletedBookingsRequest(),
    "HardDeleteBooking": booking_pb2.HardDeleteBookingRequest(),
    "PurgeDeletedBookings": booking_pb2.PurgeDeletedBookingsRequest(),
    "ListBookingAuditEntries": booking_pb2.ListBookingAuditEntriesRequest(),
}


@pytest.mark.parametrize("case", sorted(BAD_HEADERS))
async def test_bad_tokens_are_unauthenticated(stub: booking_pb2_grpc.BookingServiceAsyncStub, case: str) -> None:
    header = BAD_HEADERS[case]
    metadata = (("authorization", header),) if header is not None else ()
    await expect_error(
        stub.ListBookings(booking_pb2.ListBookingsRequest(), metadata=metadata), grpc.StatusCode.UNAUTHENTICATED
    )


@pytest.mark.parametrize("rpc", sorted(RPCS))
async def test_every_booking_rpc_requires_a_token(stub: booking_pb2_grpc.BookingServiceAsyncStub, rpc: str) -> None:
    await expect_error(getattr(stub, rpc)(RPCS[rpc]), grpc.StatusCode.UNAUTHENTICATED, "MISSING_TOKEN")


async def test_health_and_reflection_need_no_token(channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "booking.v1.BookingService"):
        response = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING

    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = reflection.ServerReflectionInfo()
    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    response = await call.read()
    await call.done_writing()
    names = {s.name for s in response.list_services_response.service}
    assert {"booking.v1.BookingService", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names


def test_a_remembered_token_is_refused_once_it_expires() -> None:
    now = [time.time()]
    verifier = TokenVerifier(JWT_SECRET, leeway_seconds=0, clock=lambda: now[0])
    short = token("user", "alice", ttl=60)
    assert verifier.verify(short).id == "alice"
    now[0] += 59
    assert verifier.verify(short).id == "alice"  # served from the cache
    now[0] += 2
    with pytest.raises(Unauthenticated) as info:
        verifier.verify(short)
    assert info.value.reason == "TOKEN_EXPIRED"


def test_the_token_cache_is_bounded() -> None:
    verifier = TokenVerifier(JWT_SECRET, cache_size=3)
    tokens = [token("user", f"u{i}") for i in range(5)]
    assert [verifier.verify(t).id for t in tokens] == [f"u{i}" for i in range(5)]
    assert len(verifier._verified) == 3
