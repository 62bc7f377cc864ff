"""No input produces UNKNOWN or INTERNAL: generated requests, and bytes that are not protobuf at all."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from booking_api.booking.v1 import booking_pb2, booking_pb2_grpc
from tests.support.helpers import ERROR_DOMAIN, auth, details_bin
from tests.support.servers import ServiceProcess

FORBIDDEN = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
# Valid UTF-8 only: protobuf refuses to serialise lone surrogates on the client side.
text = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=300)
ids = st.one_of(text, st.uuids().map(str), st.just(""))
timestamps = st.builds(
    Timestamp,
    seconds=st.integers(min_value=-(2**62), max_value=2**62),
    nanos=st.integers(min_value=-(2**31), max_value=2**31 - 1),
)
roles = st.sampled_from(["user", "provider", "admin"])
ANY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture
def sync_stub(booking_server: ServiceProcess) -> Iterator[booking_pb2_grpc.BookingServiceStub]:
    with grpc.insecure_channel(booking_server.address) as channel:
        yield booking_pb2_grpc.BookingServiceStub(channel)


def _check(call: object) -> None:
    try:
        call()  # type: ignore[operator]
    except grpc.RpcError as error:
        code = error.code()
        assert code not in FORBIDDEN, f"{code}: {error.details()}"


@ANY
@given(
    role=roles,
    customer=ids,
    provider=ids,
    service=ids,
    notes=st.one_of(text, st.text(min_size=1990, max_size=2010)),
    start=timestamps,
    end=timestamps,
    request_id=ids,
)
def test_create_booking_never_fails_with_unknown_or_internal(
    sync_stub: booking_pb2_grpc.BookingServiceStub,
    role: str,
    customer: str,
    provider: str,
    service: str,
    notes: str,
    start: Timestamp,
    end: Timestamp,
    request_id: str,
) -> None:
    booking = booking_pb2.Booking(
        customer_id=customer, provider_id=provider, service_id=service, notes=notes, start_time=start, end_time=end
    )
    request = booking_pb2.CreateBookingRequest(booking=booking, request_id=request_id)
    _check(lambda: sync_stub.CreateBooking(request, metadata=auth(role, "fuzzer"), timeout=30))


@ANY
@given(role=roles, booking_id=ids, reason=text, etag=text, page_size=st.integers(-(2**31), 2**31 - 1), token=text)
def test_other_rpcs_never_fail_with_unknown_or_internal(
    sync_stub: booking_pb2_grpc.BookingServiceStub,
    role: str,
    booking_id: str,
    reason: str,
    etag: str,
    page_size: int,
    token: str,
) -> None:
    metadata = auth(role, "fuzzer")
    calls = [
        lambda: sync_stub.GetBooking(booking_pb2.GetBookingRequest(booking_id=booking_id), metadata=metadata),
        lambda: sync_stub.DeleteBooking(
            booking_pb2.DeleteBookingRequest(booking_id=booking_id, reason=reason, etag=etag), metadata=metadata
        ),
        lambda: sync_stub.RestoreBooking(
            booking_pb2.RestoreBookingRequest(booking_id=booking_id, etag=etag), metadata=metadata
        ),
        lambda: sync_stub.ListBookings(
            booking_pb2.ListBookingsRequest(page_size=page_size, page_token=token, customer_id=booking_id),
            metadata=metadata,
        ),
        lambda: sync_stub.ListDeletedBookings(
            booking_pb2.ListDeletedBookingsRequest(page_size=page_size, page_token=token), metadata=metadata
        ),
        lambda: sync_stub.ListBookingAuditEntries(
            booking_pb2.ListBookingAuditEntriesRequest(booking_id=booking_id, page_size=page_size, page_token=token),
            metadata=metadata,
        ),
        lambda: sync_stub.HardDeleteBooking(
            booking_pb2.HardDeleteBookingRequest(booking_id=booking_id), metadata=metadata
        ),
    ]
    for call in calls:
        _check(call)


@pytest.mark.parametrize("payload", [b"\xff\xff\xff\xff", b"\x0a\x05ab", b"\x12" * 50])
def test_bytes_that_are_not_the_request_message_are_invalid_argument(
    booking_server: ServiceProcess, payload: bytes
) -> None:
    with grpc.insecure_channel(booking_server.address) as channel:
        for method in ("GetBooking", "CreateBooking", "ListBookings"):
            call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
                f"/booking.v1.BookingService/{method}"
            )
            with pytest.raises(grpc.RpcError) as info:
                call(payload, metadata=auth("admin", "fuzzer"), timeout=10)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert ERROR_DOMAIN.encode() in details_bin(info.value)
