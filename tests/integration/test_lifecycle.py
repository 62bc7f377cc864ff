"""Soft delete, restore, hard delete, purge and the audit trail."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import pytest

from booking_api.booking.v1 import booking_pb2
from tests.support.helpers import Caller, expect_error, field_violations, fresh_slot, ts, uid

Callers = Callable[[str, str], Caller]
A = booking_pb2


async def test_soft_delete_keeps_data_records_who_when_why_and_frees_the_slot(caller: Callers) -> None:
    alice, admin = caller("user", uid("alice")), caller("admin", uid("admin"))
    provider = uid("prov")
    start, end = fresh_slot()
    booking = await alice.create(provider_id=provider, start=start, end=end, notes="bring towel")
    deleted = await alice.delete(booking.id, reason="cannot make it")

    assert deleted.HasField("delete_time")
    assert (deleted.deleted_by.id, deleted.deleted_by.name, deleted.deleted_by.role) == (
        alice.id,
        f"{alice.id} name",
        A.ROLE_USER,
    )
    assert deleted.deletion_reason == "cannot make it"
    for field in ("id", "customer_id", "provider_id", "service_id", "start_time", "end_time", "notes", "create_time"):
        assert getattr(deleted, field) == getattr(booking, field), field
    assert deleted.etag != booking.etag

    # Hidden from default reads, visible to admins.
    await expect_error(alice.get(booking.id), grpc.StatusCode.NOT_FOUND)
    assert booking.id not in await alice.list_all()
    assert booking.id not in await admin.list_all(provider_id=provider)
    assert booking.id in await admin.list_all(provider_id=provider, show_deleted=True)
    assert booking.id in await admin.list_all("ListDeletedBookings", provider_id=provider)
    assert await admin.get(booking.id) == deleted

    # The slot is free again.
    await caller("user", uid("bob")).create(provider_id=provider, start=start, end=end)

    entries = await admin.audit(booking.id)
    assert [e.action for e in entries] == [A.AUDIT_ACTION_CREATED, A.AUDIT_ACTION_DELETED]
    assert entries[1].reason == "cannot make it" and entries[1].actor.id == alice.id
    assert entries[1].snapshot == deleted


async def test_deleting_a_deleted_booking_is_not_found(caller: Callers) -> None:
    alice, admin = caller("user", uid("alice")), caller("admin", uid("admin"))
    booking = await alice.create(provider_id=uid("prov"))
    await alice.delete(booking.id)
    await expect_error(alice.delete(booking.id), grpc.StatusCode.NOT_FOUND, "BOOKING_NOT_FOUND")
    await expect_error(admin.delete(booking.id), grpc.StatusCode.NOT_FOUND, "BOOKING_NOT_FOUND")


async def test_of_50_concurrent_deletes_exactly_one_succeeds_with_one_audit_entry(
    caller: Callers, db: asyncpg.Connection
) -> None:
    alice, admin = caller("user", uid("alice")), caller("admin", uid("admin"))
    booking = await alice.create(provider_id=uid("prov"))
    results = await asyncio.gather(
        *(alice.delete(booking.id, reason=f"r{i}") for i in range(50)), return_exceptions=True
    )
    successes = [r for r in results if isinstance(r, A.Booking)]
    failures = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(successes) == 1 and len(failures) == 49
    assert {f.code() for f in failures} == {grpc.StatusCode.NOT_FOUND}
    actions = [e.action for e in await admin.audit(booking.id)]
    assert actions.count(A.AUDIT_ACTION_DELETED) == 1
    stored = await db.fetchval(
        "SELECT count(*) FROM booking_audit WHERE booking_id = $1 AND action = 'DELETED'", booking.id
    )
    assert stored == 1


async def test_stale_etag_on_delete_and_restore_is_aborted(caller: Callers) -> None:
    alice, admin = caller("user", uid("alice")), caller("admin", uid("admin"))
    booking = await alice.create(provider_id=uid("prov"))
    await expect_error(alice.delete(booking.id, etag='"999"'), grpc.StatusCode.ABORTED, "ETAG_MISMATCH")
    deleted = await alice.delete(booking.id, etag=booking.etag)
    await expect_error(admin.restore(booking.id, etag=booking.etag), grpc.StatusCode.ABORTED, "ETAG_MISMATCH")
    restored = await admin.restore(booking.id, etag=deleted.etag)
    assert not restored.HasField("delete_time")


async def test_malformed_etag_is_invalid_argument(caller: Callers) -> None:
    alice = caller("user", uid("alice"))
    booking = await alice.create(provider_id=uid("prov"))
    for etag in ("yesterday", '"¹"', '"1e3"', '"' + "9" * 30 + '"'):  # '¹' is a digit to str.isdigit()
        error = await expect_error(alice.delete(booking.id, etag=etag), grpc.StatusCode.INVALID_ARGUMENT)
        assert set(field_violations(error)) == {"etag"}


async def test_restore_clears_deletion_fields_and_keeps_history(caller: Callers) -> None:
    alice, admin = caller("user", uid("alice")), caller("admin", uid("admin"))
    booking = await alice.create(provider_id=uid("prov"), notes="keep me")
    await alice.delete(booking.id, reason="oops")
    restored = await admin.restore(booking.id)
    assert not restored.HasField("delete_time") and not restored.HasField("deleted_by")
    assert restored.deletion_reason == "" and restored.notes == "keep me"
    assert await alice.get(booking.id) == restored
    entries = await admin.audit(booking.id)
    assert [e.action for e in entries] == [A.AUDIT_ACTION_CREATED, A.AUDIT_ACTION_DELETED, A.AUDIT_ACTION_RESTORED]
    assert entries[2].actor.id == admin.id and entries[2].actor.role == A.ROLE_ADMIN


async def test_restoring_an_active_booking_is_already_exists(caller: Callers) -> None:
    alice, admin = caller("user", uid("alice")), caller("admin", uid("admin"))
    booking = await alice.create(provider_id=uid("prov"))
    await expect_error(admin.restore(booking.id), grpc.StatusCode.ALREADY_EXISTS, "BOOKING_NOT_DELETED")


async def test_restore_into_a_taken_slot_fails_and_the_booking_stays_deleted(caller: Callers) -> None:
    alice, bob, admin = caller("user", uid("alice")), caller("user", uid("bob")), caller("admin", uid("admin"))
    provider = uid("prov")
    start, end = fresh_slot()
    booking = await alice.create(provider_id=provider, start=start, end=end)
    await alice.delete(booking.id)
    await bob.create(provider_id=provider, start=start + timedelta(minutes=30), end=end + timedelta(minutes=30))
    await expect_error(admin.restore(booking.id), grpc.StatusCode.FAILED_PRECONDITION, "SLOT_UNAVAILABLE")
    assert (await admin.get(booking.id)).HasField("delete_time")
    assert [e.action for e in await admin.audit(booking.id)] == [A.AUDIT_ACTION_CREATED, A.AUDIT_ACTION_DELETED]


async def test_hard_delete_of_an_active_booking_is_failed_precondition(caller: Callers) -> None:
    alice, admin = caller("user", uid("alice")), caller("admin", uid("admin"))
    booking = await alice.create(provider_id=uid("prov"))
    await expect_error(admin.hard_delete(booking.id), grpc.StatusCode.FAILED_PRECONDITION, "BOOKING_NOT_DELETED")
    assert await alice.get(booking.id) == booking


async def test_hard_delete_erases_booking_and_snapshots_but_keeps_audit_entries(
    caller: Callers, db: asyncpg.Connection
) -> None:
    alice, admin = caller("user", uid("alice")), caller("admin", uid("admin"))
    booking = await alice.create(provider_id=uid("prov"), notes="secret notes")
    await alice.delete(booking.id, reason="moving away")
    assert await admin.hard_delete(booking.id) == booking.id

    await expect_error(admin.get(booking.id), grpc.StatusCode.NOT_FOUND)
    await expect_error(admin.hard_delete(booking.id), grpc.StatusCode.NOT_FOUND)
    await expect_error(admin.restore(booking.id), grpc.StatusCode.NOT_FOUND)
    entries = await admin.audit(booking.id)
    assert [e.action for e in entries] == [A.AUDIT_ACTION_CREATED, A.AUDIT_ACTION_DELETED, A.AUDIT_ACTION_HARD_DELETED]
    assert all(not e.HasField("snapshot") for e in entries)
    assert entries[1].reason == "moving away" and entries[1].actor.id == alice.id
    assert entries[2].actor.id == admin.id
    assert not await db.fetchval("SELECT count(*) FROM bookings WHERE id = $1", booking.id)
    raw = await db.fetch("SELECT snapshot::text FROM booking_audit WHERE booking_id = $1", booking.id)
    assert all(r[0] is None for r in raw)
    assert not any("secret notes" in str(r) for r in raw)


async def test_audit_entries_cannot_be_changed_or_deleted(caller: Callers, db: asyncpg.Connection) -> None:
    alice = caller("user", uid("alice"))
    booking = await alice.create(provider_id=uid("prov"))
    for statement in (
        "UPDATE booking_audit SET reason = 'rewritten' WHERE booking_id = $1",
        "UPDATE booking_audit SET actor_id = 'someone' WHERE booking_id = $1",
        "DELETE FROM booking_audit WHERE booking_id = $1",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await db.execute(statement, booking.id)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await db.execute("TRUNCATE booking_audit")
    assert await db.fetchval("SELECT count(*) FROM booking_audit WHERE booking_id = $1", booking.id) == 1


async def test_purge_without_force_deletes_nothing_and_with_force_removes_old_deleted_bookings(
    caller: Callers, db: asyncpg.Connection
) -> None:
    alice, admin = caller("user", uid("alice")), caller("admin", uid("admin"))
    provider = uid("prov")
    old = [await alice.create(provider_id=provider) for _ in range(3)]
    for booking in old:
        await alice.delete(booking.id)
    # Age two of them, as if deleted long ago.
    long_ago = datetime(2001, 1, 1, tzinfo=UTC)
    aged = [old[0].id, old[1].id]
    await db.execute("UPDATE bookings SET delete_time = $1 WHERE id = ANY($2::uuid[])", long_ago, aged)
    active = await alice.create(provider_id=provider)
    cutoff = ts(long_ago + timedelta(days=1))

    preview = await admin.call(
        "PurgeDeletedBookings", A.PurgeDeletedBookingsRequest(deleted_before=cutoff, force=False)
    )
    # Exactly the two aged ones: neither the recently deleted one nor the active one.
    assert preview.purge_count == 2 and set(preview.purge_sample) == set(aged)
    assert await db.fetchval("SELECT count(*) FROM bookings WHERE id = ANY($1::uuid[])", aged) == 2

    purged = await admin.call("PurgeDeletedBookings", A.PurgeDeletedBookingsRequest(deleted_before=cutoff, force=True))
    assert purged.purge_count == 2 and set(purged.purge_sample) == set(aged)
    for booking_id in aged:
        await expect_error(admin.get(booking_id), grpc.StatusCode.NOT_FOUND)
        assert (await admin.audit(booking_id))[-1].action == A.AUDIT_ACTION_HARD_DELETED
    assert (await admin.get(old[2].id)).HasField("delete_time")
    assert await alice.get(active.id) == active


async def test_purge_requires_deleted_before(caller: Callers) -> None:
    admin = caller("admin", uid("admin"))
    error = await expect_error(
        admin.call("PurgeDeletedBookings", A.PurgeDeletedBookingsRequest(force=True)), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert set(field_violations(error)) == {"deleted_before"}


async def test_list_deleted_is_newest_deletion_first(caller: Callers) -> None:
    alice, admin = caller("user", uid("alice")), caller("admin", uid("admin"))
    provider = uid("prov")
    bookings = [await alice.create(provider_id=provider) for _ in range(4)]
    for booking in bookings:
        await alice.delete(booking.id)
    listed = await admin.list_all("ListDeletedBookings", page_size=3, provider_id=provider)
    assert listed == [b.id for b in reversed(bookings)]


async def test_reason_over_1000_characters_is_invalid(caller: Callers) -> None:
    alice = caller("user", uid("alice"))
    booking = await alice.create(provider_id=uid("prov"))
    error = await expect_error(alice.delete(booking.id, reason="r" * 1001), grpc.StatusCode.INVALID_ARGUMENT)
    assert set(field_violations(error)) == {"reason"}
    assert (await alice.delete(booking.id, reason="r" * 1000)).deletion_reason == "r" * 1000


@pytest.mark.parametrize("bad_id", ["", "not-a-uuid", "x" * 129, "'; DROP TABLE bookings; --"])
async def test_malformed_booking_ids_are_invalid_argument(caller: Callers, bad_id: str) -> None:
    admin = caller("admin", uid("admin"))
    for rpc in ("GetBooking", "DeleteBooking", "RestoreBooking", "HardDeleteBooking", "ListBookingAuditEntries"):
        request = getattr(A, f"{rpc}Request")(booking_id=bad_id)
        error = await expect_error(admin.call(rpc, request), grpc.StatusCode.INVALID_ARGUMENT)
        assert set(field_violations(error)) == {"booking_id"}
