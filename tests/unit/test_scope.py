"""Who may see what: one rule for both services, including identities that collide across roles."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from booking_service.domain import Booking, NewBooking, may_see
from svc_common.principal import Principal, Role
from svc_common.scope import Scope

T = datetime(2031, 1, 1, tzinfo=UTC)
T2 = datetime(2031, 1, 2, tzinfo=UTC)


def booking(customer: str, provider: str, *, deleted: bool = False) -> Booking:
    return Booking("b", customer, provider, "s", T, T, "", T, T, 1, delete_time=T if deleted else None)


def test_each_role_sees_its_own_bookings_and_admins_see_all() -> None:
    assert Scope.of(Principal("x", "x", Role.USER)) == Scope(customer_id="x", provider_id=None)
    assert Scope.of(Principal("x", "x", Role.PROVIDER)) == Scope(customer_id=None, provider_id="x")
    assert Scope.of(Principal("x", "x", Role.ADMIN)) == Scope(customer_id=None, provider_id=None)


def test_the_same_id_in_different_roles_sees_only_what_each_role_may() -> None:
    """Identity providers may well give a user and a provider the same sub."""
    as_user, as_provider = Principal("same", "s", Role.USER), Principal("same", "s", Role.PROVIDER)
    customers_booking, providers_booking = booking("same", "other"), booking("other", "same")
    assert may_see(as_user, customers_booking) and not may_see(as_user, providers_booking)
    assert may_see(as_provider, providers_booking) and not may_see(as_provider, customers_booking)
    assert not Scope.of(as_user).allows("other", "same")
    assert not Scope.of(as_provider).allows("same", "other")


def test_only_admins_see_deleted_bookings() -> None:
    gone = booking("c", "p", deleted=True)
    assert not may_see(Principal("c", "c", Role.USER), gone)
    assert not may_see(Principal("p", "p", Role.PROVIDER), gone)
    assert may_see(Principal("a", "a", Role.ADMIN), gone)


def test_a_replayed_request_is_recognised_by_every_field_it_asked_for() -> None:
    made = booking("c", "p")
    asked = NewBooking("c", "p", "s", T, T, "")
    assert made.same_request(asked)
    for change in (
        {"customer_id": "x"},
        {"provider_id": "x"},
        {"service_id": "x"},
        {"start_time": T2},
        {"end_time": T2},
        {"notes": "x"},
    ):
        assert not made.same_request(replace(asked, **change)), change


def test_etags_quote_the_version() -> None:
    assert booking("c", "p").etag == '"1"'
