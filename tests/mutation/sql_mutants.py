"""Hand-written SQL mutants, each a small plausible bug in a predicate that keeps bookings apart or in scope, run
against the integration tests that should catch it: `python -m tests.mutation.sql_mutants` (part of
`make mutants`). A mutant is killed when its tests fail; it prints one line per mutant and the kill ratio.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    original: str
    mutated: str
    tests: tuple[str, ...]


L = "tests/integration/test_lifecycle.py::"
C = "tests/integration/test_create.py::"
P = "tests/integration/test_pagination.py::"
S = "booking_service/sql.py"
ST = "booking_service/storage.py"
U = "tests/integration/test_update.py::"
W = "tests/integration/test_calendar.py::"
M1 = "booking_service/migrations/0001_bookings.sql"
M4 = "booking_service/migrations/0004_least_privilege.sql"
M9 = "booking_service/migrations/0009_schedules.sql"
H = "tests/integration/test_holds.py::"

MUTANTS = (
    Mutant(
        "exclusion constraint ignores soft delete",
        M9,
        ") WHERE (delete_time IS NULL);\n",
        ");\n",
        (L + "test_soft_delete_keeps_data_records_who_when_why_and_frees_the_slot",),
    ),
    Mutant(
        "exclusion constraint closes the range",
        M9,
        "tstzrange(start_time - before, end_time + after, '[)')",
        "tstzrange(start_time - before, end_time + after, '[]')",
        (C + "test_back_to_back_bookings_and_other_providers_do_not_clash",),
    ),
    Mutant(
        "active listing shows deleted bookings",
        S,
        'where.append("delete_time IS NULL AND (expire_time IS NULL OR expire_time > now())")',
        'where.append("(expire_time IS NULL OR expire_time > now())")',
        (L + "test_soft_delete_keeps_data_records_who_when_why_and_frees_the_slot",),
    ),
    Mutant(
        "delete ignores the customer scope",
        S,
        "AND ($6::text IS NULL OR customer_id = $6)",
        "AND ($6::text IS NULL OR customer_id = $6 OR true)",
        ("tests/integration/test_permissions.py::test_rpc_on_existing_booking",),
    ),
    Mutant(
        "delete ignores the provider scope",
        S,
        "AND ($7::text IS NULL OR provider_id = $7)",
        "AND ($7::text IS NULL OR provider_id = $7 OR true)",
        ("tests/integration/test_permissions.py::test_rpc_on_existing_booking",),
    ),
    Mutant(
        "delete of a deleted booking",
        S,
        "WHERE id = $1 AND delete_time IS NULL",
        "WHERE id = $1",
        (L + "test_deleting_a_deleted_booking_is_not_found",),
    ),
    Mutant(
        "delete ignores the etag",
        S,
        "AND ($8::bigint IS NULL OR version = $8)",
        "AND true",
        (L + "test_stale_etag_on_delete_and_restore_is_aborted",),
    ),
    Mutant(
        "restore of an active booking",
        S,
        "WHERE id = $1 AND delete_time IS NOT NULL AND",
        "WHERE id = $1 AND",
        (L + "test_restoring_an_active_booking_is_already_exists",),
    ),
    Mutant(
        "restore ignores the etag",
        S,
        "AND ($2::bigint IS NULL OR version = $2)",
        "AND true",
        (L + "test_stale_etag_on_delete_and_restore_is_aborted",),
    ),
    Mutant(
        "hard delete of an active booking",
        S,
        "WHERE b.id = v.id AND b.delete_time IS NOT NULL",
        "WHERE b.id = v.id",
        (L + "test_hard_delete_of_an_active_booking_is_failed_precondition",),
    ),
    Mutant(
        "keyset paging repeats the last row",
        S,
        'where.append(f"(start_time, id) > ({param()}, {param()})")',
        'where.append(f"(start_time, id) >= ({param()}, {param()})")',
        (P + "test_pages_cover_every_booking_once_in_start_time_order",),
    ),
    Mutant(
        "deleted paging repeats the last row",
        S,
        'where.append(f"(delete_time, id) < ({param()}, {param()})")',
        'where.append(f"(delete_time, id) <= ({param()}, {param()})")',
        (
            L + "test_list_deleted_is_newest_deletion_first",
            P + "test_pages_cover_every_booking_once_in_start_time_order",
        ),
    ),
    Mutant(
        "purge takes every deleted booking",
        S,
        "SELECT id FROM bookings WHERE delete_time < $7",
        "SELECT id FROM bookings WHERE delete_time IS NOT NULL AND $7::timestamptz IS NOT NULL",
        (L + "test_purge_without_force_deletes_nothing_and_with_force_removes_old_deleted_bookings",),
    ),
    Mutant(
        "purge preview counts every deleted booking",
        S,
        "WHERE delete_time < $1 ORDER BY",
        "WHERE delete_time IS NOT NULL AND $1::timestamptz IS NOT NULL ORDER BY",
        (L + "test_purge_without_force_deletes_nothing_and_with_force_removes_old_deleted_bookings",),
    ),
    Mutant(
        "request ids shared between callers",
        ST,
        '"SELECT * FROM bookings WHERE created_by = $1 AND request_id = $2", actor.id, request_id',
        '"SELECT * FROM bookings WHERE request_id = $2 AND $1::text IS NOT NULL", actor.id, request_id',
        (C + "test_request_id_is_per_caller",),
    ),
    Mutant(
        "update ignores the customer scope",
        S,
        "AND ($6::text IS NULL OR b.customer_id = $6)",
        "AND ($6::text IS NULL OR b.customer_id = $6 OR true)",
        (U + "test_the_customer_the_provider_and_admins_may_update_and_nobody_else_learns_it_exists",),
    ),
    Mutant(
        "update ignores the provider scope",
        S,
        "AND ($7::text IS NULL OR b.provider_id = $7)",
        "AND ($7::text IS NULL OR b.provider_id = $7 OR true)",
        (U + "test_the_customer_the_provider_and_admins_may_update_and_nobody_else_learns_it_exists",),
    ),
    Mutant(
        "update of a soft-deleted booking",
        S,
        "WHERE b.id = old.id AND b.delete_time IS NULL",
        "WHERE b.id = old.id",
        (U + "test_the_customer_the_provider_and_admins_may_update_and_nobody_else_learns_it_exists",),
    ),
    Mutant(
        "update ignores the etag",
        S,
        "AND ($8::bigint IS NULL OR b.version = $8)",
        "AND true",
        (U + "test_a_stale_etag_is_aborted_and_every_update_changes_the_etag",),
    ),
    Mutant(
        "update request ids shared between callers",
        S,
        "AND a.actor_id = {actor} AND a.request_id = {request_id}",
        "AND a.request_id = {request_id} AND {actor}::text IS NOT NULL",
        (U + "test_a_repeated_request_id_changes_once_and_another_change_under_it_is_refused",),
    ),
    Mutant(
        "a window takes bookings that only touch it",
        S,
        "tstzrange({param()}, {param()}, '[)')",
        "tstzrange({param()}, {param()}, '[]')",
        (W + "test_a_window_keeps_the_bookings_overlapping_it_with_the_other_filters",),
    ),
    Mutant(
        "free slots count soft-deleted bookings",
        S,
        "WHERE b.provider_id = $1 AND b.delete_time IS NULL",
        "WHERE b.provider_id = $1",
        (W + "test_free_slots_are_the_gaps_between_active_bookings_and_each_is_bookable",),
    ),
    Mutant(
        "a booking's reach leaves out its buffer after it",
        M9,
        "tstzrange(start_time - before, end_time + after, '[)')",
        "tstzrange(start_time - before, end_time, '[)')",
        (
            "tests/integration/test_schedules.py::test_buffers_hold_under_fifty_concurrent_creates_and_a_move_racing_a_create",
        ),
    ),
    Mutant(
        "slots ignore the buffers of the bookings around them",
        S,
        "SELECT unnest(coalesce(range_agg(booking_reach(b.start_time, b.end_time, b.buffer_before, b.buffer_after)),",
        "SELECT unnest(coalesce(range_agg(tstzrange(b.start_time, b.end_time, '[)')),",
        (
            "tests/integration/test_schedules.py::test_slots_follow_the_hours_in_the_providers_zone_and_each_is_bookable",
        ),
    ),
    Mutant(
        "a create does not retire the expired holds in its way",
        S,
        '{_retire_expired(f"b.provider_id = $3 AND',
        '{_retire_expired(f"FALSE AND b.provider_id = $3 AND',
        (H + "test_expiry_is_exact_to_the_database_clock_without_any_sweep",),
    ),
    Mutant(
        "a confirm ignores the hold's expiry",
        S,
        "AND b.state = 'HELD' AND b.delete_time IS NULL AND b.expire_time > now()",
        "AND b.state = 'HELD' AND b.delete_time IS NULL",
        (H + "test_expiry_is_exact_to_the_database_clock_without_any_sweep",),
    ),
    Mutant(
        "free slots count expired holds as busy",
        S,
        "WHERE b.provider_id = $1 AND b.delete_time IS NULL AND (b.expire_time IS NULL OR b.expire_time > now())",
        "WHERE b.provider_id = $1 AND b.delete_time IS NULL",
        (H + "test_expiry_is_exact_to_the_database_clock_without_any_sweep",),
    ),
    Mutant(
        "a hold does not take its customer's lock",
        S,
        "UNION ALL SELECT pg_advisory_xact_lock(hashtextextended('holds/' || $2::text, 0))",
        "",
        (H + "test_a_customers_concurrent_holds_are_counted_exactly_the_second_waits_for_the_first",),
    ),
    Mutant(
        "snapshot erasure reaches active bookings",
        M4,
        "AND NOT EXISTS (SELECT 1 FROM bookings b WHERE b.id = a.booking_id AND b.delete_time IS NULL)",
        "",
        ("tests/integration/test_hardening.py::test_the_service_role_can_only_read_and_append_to_the_audit_trail",),
    ),
)


def run(mutant: Mutant) -> bool:
    """Whether the mutant's tests fail (it is killed); the file is restored whatever happens."""
    path = PROJECT / mutant.path
    original = path.read_text()
    assert original.count(mutant.original) == 1, f"{mutant.name}: the original text must occur once in {mutant.path}"
    path.write_text(original.replace(mutant.original, mutant.mutated))
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--timeout=300", *mutant.tests],
            cwd=PROJECT,
            capture_output=True,
            timeout=900,
        )
    finally:
        path.write_text(original)
    return done.returncode != 0


def main() -> int:
    killed = 0
    for mutant in MUTANTS:
        dead = run(mutant)
        killed += dead
        print(f"{'killed  ' if dead else 'SURVIVED'}  {mutant.path:48} {mutant.name}", flush=True)
    print(f"SQL mutants: {killed}/{len(MUTANTS)} killed ({100 * killed / len(MUTANTS):.0f}%)")
    return 0 if killed == len(MUTANTS) else 1


if __name__ == "__main__":
    sys.exit(main())
