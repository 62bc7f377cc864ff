"""CreateBooking: validation, double-booking prevention and request_id idempotency."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import grpc

from booking_api.booking.v1 import booking_pb2
from tests.support.helpers import Caller, expect_error, field_violations, fresh_slot, ts, uid

Callers = Callable[[str, str], Caller]


async def test_user_creates_booking_for_itself_with_customer_id_defaulted(caller: Callers) -> None:
    alice = caller("user", uid("alice"))
    start, end = fresh_slot()
    booking = await alice.create(provider_id=uid("prov"), start=start, end=end, notes="first visit")
    assert booking.customer_id == alice.id
    assert booking.start_time == ts(start) and booking.end_time == ts(end)
    assert booking.notes == "first visit"
    assert booking.id and booking.etag
    assert booking.HasField("create_time") and not booking.HasField("delete_time")
    assert await alice.get(booking.id) == booking


async def test_overlapping_booking_of_same_provider_is_already_exists(caller: Callers) -> None:
    alice, bob = caller("user", uid("alice")), caller("user", uid("bob"))
    provider = uid("prov")
    start, end = fresh_slot(hours=2)
    await alice.create(provider_id=provider, start=start, end=end)
    await expect_error(
        bob.create(provider_id=provider, start=start + timedelta(hours=1), end=end + timedelta(hours=1)),
        grpc.StatusCode.ALREADY_EXISTS,
        "SLOT_UNAVAILABLE",
    )


async def test_back_to_back_bookings_and_other_providers_do_not_clash(caller: Callers) -> None:
    alice = caller("user", uid("alice"))
    provider = uid("prov")
    start, end = fresh_slot()
    await alice.create(provider_id=provider, start=start, end=end)
    await alice.create(provider_id=provider, start=end, end=end + timedelta(hours=1))
    await alice.create(provider_id=provider, start=start - timedelta(hours=1), end=start)
    await alice.create(provider_id=uid("other-prov"), start=start, end=end)


async def test_of_100_parallel_overlapping_creates_exactly_one_succeeds(caller: Callers) -> None:
    provider = uid("prov")
    start, end = fresh_slot(hours=3)
    users = [caller("user", uid(f"u{i}")) for i in range(100)]
    results = await asyncio.gather(
        *(
            u.create(provider_id=provider, start=start + timedelta(minutes=i), end=end + timedelta(minutes=i))
            for i, u in enumerate(users)
        ),
        return_exceptions=True,
    )
    successes = [r for r in results if isinstance(r, booking_pb2.Booking)]
    failures = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(successes) == 1
    assert len(failures) == 99
    for failure in failures:
        await expect_error(_raise(failure), grpc.StatusCode.ALREADY_EXISTS, "SLOT_UNAVAILABLE")
    admin = caller("admin", uid("admin"))
    assert len(await admin.list_all(provider_id=provider)) == 1


async def _raise(error: BaseException) -> None:
    raise error


async def test_same_request_id_returns_first_result_even_when_concurrent(caller: Callers) -> None:
    for _ in range(3):
        alice = caller("user", uid("alice"))
        provider, request_id = uid("prov"), uid("req")
        start, end = fresh_slot()
        results = await asyncio.gather(
            *(alice.create(provider_id=provider, start=start, end=end, request_id=request_id) for _ in range(30))
        )
        assert len({b.id for b in results}) == 1
        again = await alice.create(provider_id=provider, start=start, end=end, request_id=request_id)
        assert again == results[0]
        assert len(await alice.list_all(provider_id=provider)) == 1


async def test_request_id_is_per_caller(caller: Callers) -> None:
    alice, bob = caller("user", uid("alice")), caller("user", uid("bob"))
    request_id = uid("req")
    asked = {"alice": (uid("prov"), *fresh_slot()), "bob": (uid("prov"), *fresh_slot())}
    made = {}
    for who, client in (("alice", alice), ("bob", bob)):
        provider, start, end = asked[who]
        made[who] = await client.create(provider_id=provider, start=start, end=end, request_id=request_id)
    assert made["alice"].id != made["bob"].id
    # Each caller's replay finds its own booking, never the other's.
    for who, client in (("bob", bob), ("alice", alice)):
        provider, start, end = asked[who]
        assert await client.create(provider_id=provider, start=start, end=end, request_id=request_id) == made[who]


async def test_request_id_reused_for_a_different_booking_is_invalid_argument(caller: Callers) -> None:
    alice = caller("user", uid("alice"))
    request_id = uid("req")
    await alice.create(provider_id=uid("prov"), request_id=request_id)
    error = await expect_error(
        alice.create(provider_id=uid("prov"), request_id=request_id),
        grpc.StatusCode.INVALID_ARGUMENT,
        "REQUEST_ID_REUSED",
    )
    assert "request_id" in field_violations(error)


async def test_missing_booking_and_fields_are_reported_as_field_violations(caller: Callers) -> None:
    admin = caller("admin", uid("admin"))
    error = await expect_error(
        admin.call("CreateBooking", booking_pb2.CreateBookingRequest()), grpc.StatusCode.INVALID_ARGUMENT
    )
    fields = field_violations(error)
    assert {
        "booking",
        "booking.customer_id",
        "booking.provider_id",
        "booking.service_id",
        "booking.start_time",
        "booking.end_time",
    } <= set(fields)


async def test_reversed_and_empty_time_ranges_are_invalid(caller: Callers) -> None:
    alice = caller("user", uid("alice"))
    start, end = fresh_slot()
    error = await expect_error(
        alice.create(provider_id=uid("p"), start=end, end=start), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert set(field_violations(error)) == {"booking.end_time"}
    error = await expect_error(
        alice.create(provider_id=uid("p"), start=start, end=start), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert set(field_violations(error)) == {"booking.end_time"}


async def test_over_long_ids_notes_and_control_characters_are_invalid(caller: Callers) -> None:
    admin = caller("admin", uid("admin"))
    cases: dict[str, dict[str, Any]] = {
        "booking.provider_id": {"provider_id": "p" * 129},
        "booking.customer_id": {"provider_id": "p", "customer_id": "c" * 129},
        "booking.notes": {"provider_id": "p", "customer_id": "c", "notes": "n" * 2001},
        "booking.service_id": {"provider_id": "p", "customer_id": "c", "service_id": "bad\x00id"},
    }
    for field, kwargs in cases.items():
        kwargs.setdefault("customer_id", "c")
        error = await expect_error(admin.create(**kwargs), grpc.StatusCode.INVALID_ARGUMENT)
        assert set(field_violations(error)) == {field}, field
    error = await expect_error(
        admin.create(provider_id="p", customer_id="c", request_id="r" * 129), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert set(field_violations(error)) == {"request_id"}


async def test_limits_are_inclusive(caller: Callers) -> None:
    admin = caller("admin", uid("admin"))
    booking = await admin.create(provider_id="p" * 128, customer_id="c" * 128, notes="n" * 2000, service_id="s" * 128)
    assert len(booking.notes) == 2000


async def test_invalid_timestamp_is_invalid_argument(caller: Callers) -> None:
    alice = caller("user", uid("alice"))
    request = booking_pb2.CreateBookingRequest(
        booking=booking_pb2.Booking(provider_id="p", service_id="s", end_time=ts(fresh_slot()[1]))
    )
    request.booking.start_time.seconds = 10**12
    error = await expect_error(alice.call("CreateBooking", request), grpc.StatusCode.INVALID_ARGUMENT)
    assert "booking.start_time" in field_violations(error)
