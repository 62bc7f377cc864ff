"""UpdateBooking: a booking moved or changed in place, under the guarantees of create: who may, bad masks,
the overlap constraint (in one statement, under concurrency), etags, request ids, the audit trail."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import grpc
import pytest

from booking_api.booking.v1 import booking_pb2
from tests.support.helpers import Caller, expect_error, field_violations, fresh_slot, uid

Callers = Callable[[str, str], Caller]
A = booking_pb2
HOUR = timedelta(hours=1)


async def test_a_reschedule_keeps_the_id_and_history_and_records_what_changed(caller: Callers) -> None:
    alice, admin = caller("user", uid("alice")), caller("admin", uid("admin"))
    start, end = fresh_slot()
    booking = await alice.create(provider_id=uid("prov"), start=start, end=end, notes="towel")
    moved = await alice.move(booking.id, start + 2 * HOUR, end + 2 * HOUR, etag=booking.etag)

    assert moved.id == booking.id and moved.etag != booking.etag
    assert (moved.start_time.ToDatetime(), moved.end_time.ToDatetime()) == (
        (start + 2 * HOUR).replace(tzinfo=None),
        (end + 2 * HOUR).replace(tzinfo=None),
    )
    for kept in ("customer_id", "provider_id", "service_id", "notes", "create_time"):
        assert getattr(moved, kept) == getattr(booking, kept), kept
    assert await alice.get(booking.id) == moved

    entries = await admin.audit(booking.id)
    assert [e.action for e in entries] == [A.AUDIT_ACTION_CREATED, A.AUDIT_ACTION_UPDATED]
    updated = entries[1]
    assert updated.actor.id == alice.id and updated.snapshot == moved
    assert list(updated.update_mask.paths) == ["start_time", "end_time"]
    assert (updated.previous_time.start_time, updated.previous_time.end_time) == (booking.start_time, booking.end_time)

    # Only the fields named change: notes and service, then the end alone.
    noted = await alice.update(booking.id, "notes", "service_id", notes="", service_id="massage", end=start)
    assert (noted.notes, noted.service_id, noted.end_time) == ("", "massage", moved.end_time)
    longer = await alice.update(booking.id, "end_time", end=end + 3 * HOUR)
    assert longer.start_time == moved.start_time and longer.end_time.ToDatetime() == (end + 3 * HOUR).replace(
        tzinfo=None
    )
    entries = await admin.audit(booking.id)
    assert [list(e.update_mask.paths) for e in entries[2:]] == [["service_id", "notes"], ["end_time"]]


async def test_the_customer_the_provider_and_admins_may_update_and_nobody_else_learns_it_exists(
    caller: Callers,
) -> None:
    alice, prov = caller("user", uid("alice")), caller("provider", uid("prov"))
    admin = caller("admin", uid("admin"))
    booking = await alice.create(provider_id=prov.id)
    for who in (alice, prov, admin):
        booking = await who.update(booking.id, "notes", notes=f"by {who.role}")
        assert booking.notes == f"by {who.role}"
    for stranger in (caller("user", uid("bob")), caller("provider", uid("other")), caller("user", prov.id)):
        await expect_error(
            stranger.update(booking.id, "notes", notes="x"), grpc.StatusCode.NOT_FOUND, "BOOKING_NOT_FOUND"
        )
    await expect_error(
        alice.update(str(uuid.uuid4()), "notes", notes="x"), grpc.StatusCode.NOT_FOUND, "BOOKING_NOT_FOUND"
    )

    await alice.delete(booking.id)
    for who in (alice, prov):
        await expect_error(who.update(booking.id, "notes", notes="x"), grpc.StatusCode.NOT_FOUND, "BOOKING_NOT_FOUND")
    await expect_error(
        admin.update(booking.id, "notes", notes="x"), grpc.StatusCode.FAILED_PRECONDITION, "BOOKING_DELETED"
    )
    assert (await admin.get(booking.id)).notes == "by admin"


@pytest.mark.parametrize(
    ("paths", "fields", "field"),
    [
        ((), {}, "update_mask"),
        (("customer_id",), {}, "update_mask.paths[0]"),
        (("notes", "provider_id"), {}, "update_mask.paths[1]"),
        (("start_time",), {}, "booking.start_time"),  # named, not given
        (("service_id",), {"service_id": ""}, "booking.service_id"),
        (("notes",), {"notes": "n" * 2001}, "booking.notes"),
    ],
)
async def test_a_bad_mask_or_value_is_invalid_argument_naming_the_field(
    caller: Callers, paths: tuple[str, ...], fields: dict[str, Any], field: str
) -> None:
    alice = caller("user", uid("alice"))
    booking = await alice.create(provider_id=uid("prov"))
    error = await expect_error(alice.update(booking.id, *paths, **fields), grpc.StatusCode.INVALID_ARGUMENT)
    assert field in field_violations(error), field_violations(error)
    assert await alice.get(booking.id) == booking


async def test_a_mask_of_a_hundred_thousand_paths_is_one_violation_not_a_status_too_large_to_send(
    caller: Callers,
) -> None:
    alice = caller("user", uid("alice"))
    booking = await alice.create(provider_id=uid("prov"))
    error = await expect_error(alice.update(booking.id, *(["x"] * 100_000)), grpc.StatusCode.INVALID_ARGUMENT)
    assert field_violations(error) == {"update_mask": "at most 16 paths, among start_time, end_time, service_id, notes"}
    assert (await alice.update(booking.id, *(["notes"] * 16), notes="16 times")).notes == "16 times"


async def test_times_follow_the_rules_of_create_against_the_stored_time_too(caller: Callers) -> None:
    alice = caller("user", uid("alice"))
    start, end = fresh_slot()
    booking = await alice.create(provider_id=uid("prov"), start=start, end=end)
    error = await expect_error(alice.move(booking.id, end, start), grpc.StatusCode.INVALID_ARGUMENT)
    assert "booking.end_time" in field_violations(error)
    # One end alone, against the other as stored: checked by the database's constraint, in the same statement.
    error = await expect_error(alice.update(booking.id, "end_time", end=start), grpc.StatusCode.INVALID_ARGUMENT)
    assert field_violations(error) == {"booking.end_time": "must be after start_time"}
    error = await expect_error(alice.update(booking.id, "start_time", start=end), grpc.StatusCode.INVALID_ARGUMENT)
    assert field_violations(error) == {"booking.start_time": "must be before end_time"}
    request = alice.update(booking.id, "start_time", start=start.replace(year=1969))
    assert "booking.start_time" in field_violations(await expect_error(request, grpc.StatusCode.INVALID_ARGUMENT))
    assert await alice.get(booking.id) == booking


async def test_onto_a_taken_slot_is_already_exists_and_the_booking_stays_where_it_was(caller: Callers) -> None:
    alice, bob = caller("user", uid("alice")), caller("user", uid("bob"))
    provider = uid("prov")
    start, end = fresh_slot(hours=4)
    mine = await alice.create(provider_id=provider, start=start, end=start + HOUR)
    theirs = await bob.create(provider_id=provider, start=start + 2 * HOUR, end=start + 3 * HOUR)
    await expect_error(
        alice.move(mine.id, start + 2 * HOUR + HOUR / 2, end), grpc.StatusCode.ALREADY_EXISTS, "SLOT_UNAVAILABLE"
    )
    assert await alice.get(mine.id) == mine
    # Overlapping its own old time is fine; back to back with another is too.
    shifted = await alice.move(mine.id, start + HOUR / 2, start + 2 * HOUR)
    assert shifted.end_time == theirs.start_time
    # A soft-deleted booking's slot is free.
    await bob.delete(theirs.id)
    onto = await alice.move(mine.id, start + 2 * HOUR, start + 3 * HOUR)
    assert onto.start_time == theirs.start_time
    # The same time for another provider never clashes.
    other = await bob.create(provider_id=uid("prov"), start=start + 2 * HOUR, end=start + 3 * HOUR)
    assert other.start_time == onto.start_time


async def test_a_stale_etag_is_aborted_and_every_update_changes_the_etag(caller: Callers) -> None:
    alice = caller("user", uid("alice"))
    booking = await alice.create(provider_id=uid("prov"))
    first = await alice.update(booking.id, "notes", notes="one", etag=booking.etag)
    second = await alice.update(booking.id, "notes", notes="one")  # the same value: still a change of version
    assert len({booking.etag, first.etag, second.etag}) == 3
    await expect_error(
        alice.update(booking.id, "notes", notes="two", etag=first.etag), grpc.StatusCode.ABORTED, "ETAG_MISMATCH"
    )
    error = await expect_error(alice.update(booking.id, "notes", etag="nonsense"), grpc.StatusCode.INVALID_ARGUMENT)
    assert "booking.etag" in field_violations(error)
    assert (await alice.get(booking.id)).notes == "one"


async def test_a_repeated_request_id_changes_once_and_another_change_under_it_is_refused(caller: Callers) -> None:
    alice, admin = caller("user", uid("alice")), caller("admin", uid("admin"))
    start, end = fresh_slot()
    booking = await alice.create(provider_id=uid("prov"), start=start, end=end)
    request_id = uid("req")
    calls = [alice.update(booking.id, "notes", notes="once", request_id=request_id) for _ in range(5)]
    results = await asyncio.gather(*calls)
    assert len({r.etag for r in results}) == 1
    entries = await admin.audit(booking.id)
    assert [e.action for e in entries] == [A.AUDIT_ACTION_CREATED, A.AUDIT_ACTION_UPDATED]
    again = await alice.update(booking.id, "notes", notes="once", request_id=request_id)
    assert again == results[0]
    await expect_error(
        alice.update(booking.id, "notes", notes="twice", request_id=request_id),
        grpc.StatusCode.INVALID_ARGUMENT,
        "REQUEST_ID_REUSED",
    )
    # Another caller's request_id is its own.
    assert (await admin.update(booking.id, "notes", notes="admin", request_id=request_id)).notes == "admin"


async def test_forty_pairs_of_reschedules_racing_into_one_free_slot_one_wins_each(caller: Callers) -> None:
    pairs = 40
    alice = caller("admin", uid("admin"))
    provider = uid("prov")
    start, _ = fresh_slot(hours=pairs * 3)
    contenders = []
    for n in range(pairs):
        base = start + 3 * n * HOUR
        contenders.append(
            (
                await alice.create(provider_id=provider, customer_id="c", start=base, end=base + HOUR),
                await alice.create(provider_id=provider, customer_id="c", start=base + 2 * HOUR, end=base + 3 * HOUR),
            )
        )

    async def race(n: int, booking: booking_pb2.Booking) -> bool:
        target = start + 3 * n * HOUR + HOUR  # the free hour between the pair
        try:
            await alice.move(booking.id, target - HOUR / 2, target + HOUR / 2)
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.ALREADY_EXISTS, error
            return False
        return True

    won = await asyncio.gather(*(race(n, b) for n, pair in enumerate(contenders) for b in pair))
    assert [sum(won[2 * n : 2 * n + 2]) for n in range(pairs)] == [1] * pairs
    listed = await alice.list_all(provider_id=provider)
    assert len(listed) == 2 * pairs


async def test_a_reschedule_racing_a_create_for_the_same_slot_one_wins(caller: Callers) -> None:
    admin = caller("admin", uid("admin"))
    provider = uid("prov")
    bookings = 0
    for _ in range(20):
        start, end = fresh_slot()
        booking = await admin.create(provider_id=provider, customer_id="c", start=end + HOUR, end=end + 2 * HOUR)
        moved, created = await asyncio.gather(
            admin.move(booking.id, start, end),
            admin.create(provider_id=provider, customer_id="c", start=start, end=end),
            return_exceptions=True,
        )
        lost = moved if isinstance(moved, BaseException) else created
        assert isinstance(lost, grpc.aio.AioRpcError) and lost.code() == grpc.StatusCode.ALREADY_EXISTS, lost
        assert not isinstance(moved, BaseException) or not isinstance(created, BaseException)
        after = await admin.get(booking.id)
        if isinstance(moved, BaseException):  # the create won: the booking stayed where it was
            assert after == booking
            bookings += 2
        else:
            assert after == moved and after.start_time.ToDatetime() == start.replace(tzinfo=None)
            bookings += 1
        assert len(await admin.list_all(provider_id=provider)) == bookings
