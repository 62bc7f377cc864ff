"""Bookings in the past: users and providers may not create one that starts before now, nor move one there
(FAILED_PRECONDITION `IN_THE_PAST`, a minute of leeway); admins may (a backfill), and the audit entry says so."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import grpc

from tests.support.helpers import Caller, error_infos, expect_error, uid

Callers = Callable[[str, str], Caller]


def minutes_from_now(minutes: float, length: float = 30) -> tuple[datetime, datetime]:
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=minutes)
    return start, start + timedelta(minutes=length)


async def test_users_and_providers_cannot_book_before_now_but_within_the_leeway(caller: Callers) -> None:
    alice, provider = caller("user", uid("alice")), uid("prov")
    start, end = minutes_from_now(-2)
    error = await expect_error(
        alice.create(provider_id=provider, start=start, end=end), grpc.StatusCode.FAILED_PRECONDITION, "IN_THE_PAST"
    )
    assert error_infos(error)[0].metadata["start_time"] == start.isoformat()
    doctor = caller("provider", provider)
    await expect_error(
        doctor.create(provider_id=provider, customer_id=uid("cust"), start=start, end=end),
        grpc.StatusCode.FAILED_PRECONDITION,
        "IN_THE_PAST",
    )
    start, end = minutes_from_now(-0.5)  # a booking made as it begins: within the minute of leeway
    made = await alice.create(provider_id=provider, start=start, end=end)
    assert made.start_time.ToDatetime(UTC) == start


async def test_a_move_into_the_past_is_refused_to_users_and_notes_or_the_end_may_still_change(caller: Callers) -> None:
    alice, provider = caller("user", uid("alice")), uid("prov")
    start, end = minutes_from_now(60)
    made = await alice.create(provider_id=provider, start=start, end=end)
    past, _ = minutes_from_now(-120)
    await expect_error(
        alice.update(made.id, "start_time", start=past), grpc.StatusCode.FAILED_PRECONDITION, "IN_THE_PAST"
    )
    moved = await alice.update(made.id, "end_time", "notes", end=end + timedelta(minutes=15), notes="longer")
    assert moved.notes == "longer"


async def test_an_admin_may_backfill_and_the_audit_entry_says_so(caller: Callers) -> None:
    root, provider = caller("admin", uid("root")), uid("prov")
    start, end = minutes_from_now(-24 * 60)
    made = await root.create(provider_id=provider, customer_id=uid("cust"), start=start, end=end)
    later, later_end = minutes_from_now(-23 * 60)
    await root.update(made.id, "start_time", "end_time", start=later, end=later_end)
    soon, soon_end = minutes_from_now(60)
    await root.update(made.id, "start_time", "end_time", start=soon, end=soon_end)
    entries = await root.audit(made.id)
    reasons = [entry.reason for entry in entries]
    assert reasons[0].startswith(f"backfill: starts {start.isoformat()}")
    assert reasons[1].startswith(f"backfill: starts {later.isoformat()}")
    assert reasons[2] == ""  # moved to the future: no backfill
