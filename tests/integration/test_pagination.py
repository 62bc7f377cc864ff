"""Paging: sizes, opaque tokens bound to their query, and stability under concurrent writes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta

import grpc

from booking_api.booking.v1 import booking_pb2
from booking_service import pagination
from tests.support.helpers import JWT_SECRET, Caller, expect_error, field_violations, fresh_slot, uid

Callers = Callable[[str, str], Caller]


async def _bookings(owner: Caller, provider: str, count: int) -> list[str]:
    start, _ = fresh_slot()
    ids = []
    for i in range(count):
        slot = start + timedelta(hours=i)
        ids.append((await owner.create(provider_id=provider, start=slot, end=slot + timedelta(hours=1))).id)
    return ids


async def test_pages_cover_every_booking_once_in_start_time_order(caller: Callers) -> None:
    alice = caller("user", uid("alice"))
    ids = await _bookings(alice, uid("prov"), 7)
    assert await alice.list_all(page_size=3) == ids
    assert await alice.list_all(page_size=1) == ids
    first = await alice.call("ListBookings", booking_pb2.ListBookingsRequest(page_size=7))
    assert [b.id for b in first.bookings] == ids and first.next_page_token == ""


async def test_page_size_zero_is_50_and_above_1000_is_lowered(caller: Callers) -> None:
    alice = caller("user", uid("alice"))
    ids = await _bookings(alice, uid("prov"), 51)
    default = await alice.call("ListBookings", booking_pb2.ListBookingsRequest())
    assert len(default.bookings) == 50 and default.next_page_token
    huge = await alice.call("ListBookings", booking_pb2.ListBookingsRequest(page_size=5000))
    assert [b.id for b in huge.bookings] == ids and not huge.next_page_token


async def test_negative_page_size_is_invalid_argument(caller: Callers) -> None:
    alice = caller("user", uid("alice"))
    error = await expect_error(
        alice.call("ListBookings", booking_pb2.ListBookingsRequest(page_size=-1)), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert set(field_violations(error)) == {"page_size"}


async def test_bad_and_mismatched_page_tokens_are_invalid_argument(caller: Callers) -> None:
    alice, bob = caller("user", uid("alice")), caller("user", uid("bob"))
    provider = uid("prov")
    await _bookings(alice, provider, 3)
    page = await alice.call("ListBookings", booking_pb2.ListBookingsRequest(page_size=1))
    token = page.next_page_token
    assert token
    for request, who in [
        (booking_pb2.ListBookingsRequest(page_token="garbage!"), alice),
        (booking_pb2.ListBookingsRequest(page_token=token[:-3]), alice),
        (booking_pb2.ListBookingsRequest(page_token=token, provider_id=provider), alice),  # other filter
        (booking_pb2.ListBookingsRequest(page_token=token), bob),  # other caller
    ]:
        error = await expect_error(
            who.call("ListBookings", request), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN"
        )
        assert set(field_violations(error)) == {"page_token"}
    admin = caller("admin", uid("admin"))
    await expect_error(
        admin.call("ListDeletedBookings", booking_pb2.ListDeletedBookingsRequest(page_token=token)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_PAGE_TOKEN",
    )


async def test_paging_during_concurrent_writes_never_repeats_or_skips(caller: Callers) -> None:
    provider = caller("provider", uid("prov"))
    customer = caller("user", uid("cust"))
    start, _ = fresh_slot()
    hour = timedelta(hours=1)
    # Bookings every other hour; a writer keeps creating and deleting others in the gaps while we page.
    ids = []
    for i in range(30):
        slot = start + 2 * i * hour
        ids.append((await customer.create(provider_id=provider.id, start=slot, end=slot + hour)).id)
    stop = asyncio.Event()

    async def churn() -> int:
        count = 0
        while not stop.is_set():
            gap = start + (2 * (count % 30) + 1) * hour
            booking = await customer.create(provider_id=provider.id, start=gap, end=gap + hour)
            await customer.delete(booking.id)
            count += 1
        return count

    churner = asyncio.create_task(churn())
    try:
        seen = await provider.list_all(page_size=2)
    finally:
        stop.set()
        churned = await churner
    assert churned > 0
    assert len(seen) == len(set(seen)), "a booking was repeated"
    assert [i for i in seen if i in set(ids)] == ids, "a booking was skipped or reordered"


async def test_audit_entries_page_oldest_first(caller: Callers) -> None:
    alice, admin = caller("user", uid("alice")), caller("admin", uid("admin"))
    booking = await alice.create(provider_id=uid("prov"))
    for _ in range(3):
        await alice.delete(booking.id)
        await admin.restore(booking.id)
    entries, token = [], ""
    while True:
        page = await admin.call(
            "ListBookingAuditEntries",
            booking_pb2.ListBookingAuditEntriesRequest(booking_id=booking.id, page_size=2, page_token=token),
        )
        entries.extend(page.entries)
        token = page.next_page_token
        if not token:
            break
    assert len(entries) == 7
    assert [e.create_time.ToDatetime() for e in entries] == sorted(e.create_time.ToDatetime() for e in entries)
    assert len({e.id for e in entries}) == 7


async def test_signed_tokens_with_out_of_range_positions_are_invalid_argument(caller: Callers) -> None:
    """Behind the signature, the values are still checked (a token signed with the server's key)."""
    tokens = pagination.PageTokens(pagination.derive_key(JWT_SECRET))
    alice, admin = caller("user", uid("alice")), caller("admin", uid("admin"))
    booking = await alice.create(provider_id=uid("prov"))
    for position in (10**30, -1):
        query = pagination.fingerprint("ListBookingAuditEntries", booking.id)
        request = booking_pb2.ListBookingAuditEntriesRequest(
            booking_id=booking.id, page_token=tokens.encode(query, (position,))
        )
        await expect_error(admin.call("ListBookingAuditEntries", request), grpc.StatusCode.INVALID_ARGUMENT)
    query = pagination.fingerprint("ListBookings", alice.id, "user", None, None, False)
    naive = booking_pb2.ListBookingsRequest(page_token=tokens.encode(query, ("2030-01-01T00:00:00", booking.id)))
    await expect_error(alice.call("ListBookings", naive), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN")
