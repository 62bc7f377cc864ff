"""The permission matrix: user, provider and admin against own, assigned, other and missing bookings."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest

from booking_api.booking.v1 import booking_pb2
from tests.support.helpers import Caller, expect_error, ts, uid

Callers = Callable[[str, str], Caller]
OK = grpc.StatusCode.OK
NOT_FOUND = grpc.StatusCode.NOT_FOUND
DENIED = grpc.StatusCode.PERMISSION_DENIED

# Who calls, relative to the booking: its customer, its provider, another user, another provider, an admin, and
# identities that collide across roles (identity providers may give a user and a provider the same sub): the
# customer's id as a provider, the provider's id as a user.
CALLERS = ["customer", "provider", "other_user", "other_provider", "admin", "customer_as_provider", "provider_as_user"]

# For each RPC on one booking: the expected code per caller when the booking exists (active, or deleted for
# Restore and HardDelete), and when it does not exist.
# The customer, the provider and admins see a booking; strangers get NOT_FOUND, as if it did not exist.
SEEN_BY_ITS_PARTIES = {
    "customer": (OK, NOT_FOUND),
    "provider": (OK, NOT_FOUND),
    "other_user": (NOT_FOUND, NOT_FOUND),
    "other_provider": (NOT_FOUND, NOT_FOUND),
    "admin": (OK, NOT_FOUND),
    "customer_as_provider": (NOT_FOUND, NOT_FOUND),
    "provider_as_user": (NOT_FOUND, NOT_FOUND),
}
# Every other role is refused whether or not the booking exists.
ADMIN_ONLY = {
    "customer": (DENIED, DENIED),
    "provider": (DENIED, DENIED),
    "other_user": (DENIED, DENIED),
    "other_provider": (DENIED, DENIED),
    "admin": (OK, NOT_FOUND),
    "customer_as_provider": (DENIED, DENIED),
    "provider_as_user": (DENIED, DENIED),
}
MATRIX: dict[str, dict[str, tuple[grpc.StatusCode, grpc.StatusCode]]] = {
    "GetBooking": SEEN_BY_ITS_PARTIES,
    "DeleteBooking": SEEN_BY_ITS_PARTIES,
    "RestoreBooking": ADMIN_ONLY,
    "HardDeleteBooking": ADMIN_ONLY,
    "ListBookingAuditEntries": ADMIN_ONLY,
}
NEEDS_DELETED = {"RestoreBooking", "HardDeleteBooking"}


def _request(rpc: str, booking_id: str) -> Any:
    request_type = getattr(booking_pb2, f"{rpc}Request")
    return request_type(booking_id=booking_id)


class World:
    """A booking between a customer and a provider, plus strangers and an admin."""

    def __init__(self, caller: Callers) -> None:
        self.customer = caller("user", uid("cust"))
        self.provider = caller("provider", uid("prov"))
        self.callers = {
            "customer": self.customer,
            "provider": self.provider,
            "other_user": caller("user", uid("stranger")),
            "other_provider": caller("provider", uid("stranger-prov")),
            "admin": caller("admin", uid("admin")),
            "customer_as_provider": caller("provider", self.customer.id),
            "provider_as_user": caller("user", self.provider.id),
        }

    async def booking(self, *, deleted: bool = False) -> booking_pb2.Booking:
        booking = await self.customer.create(provider_id=self.provider.id)
        if deleted:
            booking = await self.customer.delete(booking.id, reason="for the test")
        return booking


async def _expect(call: Awaitable[Any], code: grpc.StatusCode) -> None:
    if code == OK:
        await call
    else:
        await expect_error(call, code)


async def _check_done(world: World, who: str, rpc: str, booking: booking_pb2.Booking, response: Any) -> None:
    """What an OK call returned and what it changed, as an admin reads it afterwards."""
    admin, actor = world.callers["admin"], world.callers[who]
    if rpc == "GetBooking":
        assert response.booking == booking
        return
    if rpc == "ListBookingAuditEntries":
        assert [(e.booking_id, e.action) for e in response.entries] == [(booking.id, booking_pb2.AUDIT_ACTION_CREATED)]
        return
    if rpc == "HardDeleteBooking":
        assert response.booking_id == booking.id
        await expect_error(admin.get(booking.id), NOT_FOUND)
        assert (await admin.audit(booking.id))[-1].action == booking_pb2.AUDIT_ACTION_HARD_DELETED
        return
    now = await admin.get(booking.id)
    assert response.booking == now and now.etag != booking.etag
    if rpc == "DeleteBooking":
        assert now.HasField("delete_time") and now.deleted_by.id == actor.id
    else:  # RestoreBooking
        assert not now.HasField("delete_time") and not now.HasField("deleted_by")
    assert (await admin.audit(booking.id))[-1].actor.id == actor.id


@pytest.mark.parametrize("who", CALLERS)
@pytest.mark.parametrize("rpc", sorted(MATRIX))
async def test_rpc_on_existing_booking(caller: Callers, rpc: str, who: str) -> None:
    world = World(caller)
    booking = await world.booking(deleted=rpc in NEEDS_DELETED)
    expected, _ = MATRIX[rpc][who]
    call = world.callers[who].call(rpc, _request(rpc, booking.id))
    if expected != OK:
        await expect_error(call, expected)
        assert await world.callers["admin"].get(booking.id) == booking  # nothing changed
        return
    await _check_done(world, who, rpc, booking, await call)


@pytest.mark.parametrize("who", CALLERS)
@pytest.mark.parametrize("rpc", sorted(MATRIX))
async def test_rpc_on_missing_booking(caller: Callers, rpc: str, who: str) -> None:
    world = World(caller)
    _, expected = MATRIX[rpc][who]
    await _expect(world.callers[who].call(rpc, _request(rpc, str(uuid.uuid4()))), expected)


@pytest.mark.parametrize("who", [who for who in CALLERS if who != "admin"])
async def test_deleted_booking_is_not_found_for_everyone_but_admins(caller: Callers, who: str) -> None:
    world = World(caller)
    booking = await world.booking(deleted=True)
    for rpc in ("GetBooking", "DeleteBooking"):
        await expect_error(world.callers[who].call(rpc, _request(rpc, booking.id)), NOT_FOUND)
    assert (await world.callers["admin"].get(booking.id)).HasField("delete_time")


async def test_not_found_looks_the_same_for_missing_and_invisible_bookings(caller: Callers) -> None:
    world = World(caller)
    booking = await world.booking()
    stranger = world.callers["other_user"]
    hidden = await expect_error(stranger.get(booking.id), NOT_FOUND)
    missing_id = str(uuid.uuid4())
    missing = await expect_error(stranger.get(missing_id), NOT_FOUND)
    assert (hidden.details() or "").replace(booking.id, "ID") == (missing.details() or "").replace(missing_id, "ID")


@pytest.mark.parametrize("role", ["user", "provider"])
async def test_admin_only_collection_rpcs_are_permission_denied(caller: Callers, role: str) -> None:
    someone = caller(role, uid(role))
    calls = [
        someone.call("ListDeletedBookings", booking_pb2.ListDeletedBookingsRequest()),
        someone.call(
            "PurgeDeletedBookings",
            booking_pb2.PurgeDeletedBookingsRequest(deleted_before=ts(datetime(2000, 1, 1, tzinfo=UTC))),
        ),
        someone.call("ListBookings", booking_pb2.ListBookingsRequest(show_deleted=True)),
    ]
    for call in calls:
        await expect_error(call, DENIED, "ADMIN_ONLY")


async def test_list_is_scoped_to_what_each_caller_may_see(caller: Callers) -> None:
    world = World(caller)
    own = await world.booking()
    other_customer = caller("user", uid("cust2"))
    assigned_elsewhere = await other_customer.create(provider_id=world.provider.id)
    unrelated = await other_customer.create(provider_id=uid("prov2"))

    assert await world.customer.list_all() == [own.id]
    assert set(await world.provider.list_all()) == {own.id, assigned_elsewhere.id}
    admin_sees = set(await world.callers["admin"].list_all())
    assert {own.id, assigned_elsewhere.id, unrelated.id} <= admin_sees
    # Filters only narrow: asking for someone else's bookings yields nothing.
    assert await world.customer.list_all(customer_id=other_customer.id) == []
    assert await world.provider.list_all(customer_id=other_customer.id) == [assigned_elsewhere.id]
    assert await world.callers["other_provider"].list_all(provider_id=world.provider.id) == []


async def test_user_may_not_book_for_another_customer(caller: Callers) -> None:
    alice = caller("user", uid("alice"))
    await expect_error(alice.create(provider_id=uid("p"), customer_id=uid("bob")), DENIED, "NOT_OWN_BOOKING")


async def test_provider_may_only_create_its_own_bookings(caller: Callers) -> None:
    provider = caller("provider", uid("prov"))
    booking = await provider.create(provider_id=provider.id, customer_id=uid("cust"))
    assert booking.provider_id == provider.id
    await expect_error(provider.create(provider_id=uid("p"), customer_id=uid("c")), DENIED, "NOT_OWN_BOOKING")


async def test_admin_creates_for_anyone(caller: Callers) -> None:
    admin = caller("admin", uid("admin"))
    customer, provider = uid("c"), uid("p")
    booking = await admin.create(provider_id=provider, customer_id=customer)
    assert (booking.customer_id, booking.provider_id) == (customer, provider)


@pytest.mark.parametrize("role", ["user", "provider"])
async def test_admin_only_rpcs_are_permission_denied_before_input_is_checked(caller: Callers, role: str) -> None:
    someone = caller(role, uid(role))
    bad = "not-a-booking-id"
    calls = [
        someone.call("RestoreBooking", booking_pb2.RestoreBookingRequest(booking_id=bad, etag="??")),
        someone.call("HardDeleteBooking", booking_pb2.HardDeleteBookingRequest(booking_id=bad)),
        someone.call("ListBookingAuditEntries", booking_pb2.ListBookingAuditEntriesRequest(booking_id=bad)),
        someone.call("PurgeDeletedBookings", booking_pb2.PurgeDeletedBookingsRequest()),
        someone.call("ListDeletedBookings", booking_pb2.ListDeletedBookingsRequest(page_size=-1)),
        someone.call("ListBookings", booking_pb2.ListBookingsRequest(show_deleted=True, page_token="garbage")),
    ]
    for call in calls:
        await expect_error(call, DENIED, "ADMIN_ONLY")
