"""Every statement of storage.py. Each write is a single statement: a data-modifying CTE writes the booking, its
audit entry and its change event in the outbox together, so it commits atomically with one round trip."""

from __future__ import annotations

from functools import cache

_AUDIT_INSERT = """
    INSERT INTO booking_audit (id, booking_id, action, actor_id, actor_name, actor_role, reason, snapshot)
"""
# The change event goes into the outbox in the same statement, hence the same transaction (see outbox.py).
_OUTBOX_INSERT = """
    INSERT INTO booking_outbox (event_type, booking, actor_id, actor_name, actor_role, traceparent)
"""

# Who the audit trail and the event name for a hold's expiry (as the retention purge, a system actor with an
# admin's role).
EXPIRY_ACTOR = ("system:hold-expiry", "hold expiry", "admin")
HOLD_EXPIRED_REASON = "hold expired"
_HELD_REACH = "booking_reach(b.start_time, b.end_time, b.buffer_before, b.buffer_after)"  # the time a hold `b` blocks


def _retire_expired(which: str, *, using: str = "") -> str:
    """CTEs `expired`, its audit entries and its events: retire (soft-delete, action and event EXPIRED) the
    active holds whose expire_time has come that `which` (a condition on `b` and the relations `using` names)
    selects. A writing statement reads `expired` before it writes, so the hold it retires no longer stands in the
    overlap constraint's way (a row this transaction updated is not a conflict); a concurrent retirement or
    confirm of the same hold waits on its row lock and then finds it no longer matches."""
    actor_id, actor_name, actor_role = EXPIRY_ACTOR
    return f"""expired AS (
    UPDATE bookings b
       SET delete_time = now(), update_time = now(), version = b.version + 1,
           deleted_by_id = '{actor_id}', deleted_by_name = '{actor_name}', deleted_by_role = '{actor_role}',
           deletion_reason = '{HOLD_EXPIRED_REASON}'
     {f"FROM {using}" if using else ""}
     WHERE b.state = 'HELD' AND b.delete_time IS NULL AND b.expire_time <= now() AND ({which})
    RETURNING b.*
), expired_audit AS (
    {_AUDIT_INSERT}
    SELECT gen_random_uuid(), expired.id, 'EXPIRED', '{actor_id}', '{actor_name}', '{actor_role}',
           '{HOLD_EXPIRED_REASON}', to_jsonb(expired)
      FROM expired
), expired_event AS (
    {_OUTBOX_INSERT}
    SELECT 'EXPIRED', to_jsonb(expired), '{actor_id}', '{actor_name}', '{actor_role}', NULL FROM expired
)"""


def _create_sql(*, hold: bool) -> str:
    """CreateBooking's statement, or HoldSlot's (hold: also $17 the ttl, $18-$19 the bounds of unexpired holds
    per customer and per provider; the row also says how many each has, `holds`, when the bounds refused it).

    Calls with the same caller and request_id are serialised by a transaction-scoped advisory lock taken before
    the insert (the insert reads from `gate`), so a later one finds the earlier one's row; without it, concurrent
    duplicates deadlock between the request_id index and the overlap constraint. Then the writes of one
    provider's times are serialised the same way (PROVIDER_LOCK): concurrent inserts whose reaches overlap would
    otherwise wait on each other's uncommitted rows in the constraint's check and deadlock, instead of one of
    them failing it at once. A hold also takes its customer's lock, so the count of a customer's holds is
    exact: booking_unexpired_holds counts with a snapshot taken after the locks, not the statement's.
    Expired holds in the new booking's way are retired first (`expired`)."""
    customer_lock = "UNION ALL SELECT pg_advisory_xact_lock(hashtextextended('holds/' || $2::text, 0))"
    reach = (
        "booking_reach($5::timestamptz, $6::timestamptz, make_interval(secs => extract(epoch FROM $15::interval)),"
        " make_interval(secs => extract(epoch FROM $16::interval)))"
    )
    holds = "SELECT booking_unexpired_holds($2::text, $3::text) AS counts FROM gate"
    return f"""
WITH gate AS (
    SELECT count(*) FROM (
        SELECT pg_advisory_xact_lock(hashtextextended($8::text || '/' || $9::text, 0)) WHERE $9::text IS NOT NULL
        UNION ALL
        SELECT pg_advisory_xact_lock(hashtextextended('provider/' || $3::text, 0))
        {customer_lock if hold else ""}
    ) locked
), {_retire_expired(f"b.provider_id = $3 AND {_HELD_REACH} && {reach} AND EXISTS (SELECT FROM gate)")},
holds AS ({holds if hold else "SELECT NULL::bigint[] AS counts"}
), ins AS (
    INSERT INTO bookings (id, customer_id, provider_id, service_id, start_time, end_time, notes,
                          created_by, request_id, buffer_before, buffer_after, state, expire_time)
    SELECT $1::uuid, $2::text, $3::text, $4::text, $5::timestamptz, $6::timestamptz, $7::text, $8::text, $9::text,
           make_interval(secs => extract(epoch FROM $15::interval)),
           make_interval(secs => extract(epoch FROM $16::interval)),
           {"'HELD', now() + $17::interval" if hold else "'CONFIRMED', NULL"}
      FROM gate, holds, (SELECT count(*) FROM expired) retired
     {"WHERE holds.counts[1] < $18::bigint AND holds.counts[2] < $19::bigint" if hold else ""}
    ON CONFLICT (created_by, request_id) WHERE request_id IS NOT NULL DO NOTHING
    RETURNING *
), audit AS (
    {_AUDIT_INSERT}
    SELECT $10, ins.id, '{"HELD" if hold else "CREATED"}', $8, $11, $12, $14::text, to_jsonb(ins) FROM ins
), event AS (
    {_OUTBOX_INSERT}
    SELECT '{"HELD" if hold else "CREATED"}', to_jsonb(ins), $8, $11, $12, $13::text FROM ins
)
SELECT ins.*, holds.counts AS holds FROM holds LEFT JOIN ins ON true
"""


CREATE_SQL = _create_sql(hold=False)
HOLD_SQL = _create_sql(hold=True)

DELETE_SQL = f"""
WITH upd AS (
    UPDATE bookings
       SET delete_time = now(), update_time = now(), version = version + 1,
           deleted_by_id = $2, deleted_by_name = $3, deleted_by_role = $4, deletion_reason = $5
     WHERE id = $1 AND delete_time IS NULL
       AND ($6::text IS NULL OR customer_id = $6)
       AND ($7::text IS NULL OR provider_id = $7)
       AND ($8::bigint IS NULL OR version = $8)
    RETURNING *
), audit AS (
    {_AUDIT_INSERT}
    SELECT $9, upd.id, 'DELETED', $2, $3, $4, $5, to_jsonb(upd) FROM upd
), event AS (
    {_OUTBOX_INSERT}
    SELECT 'DELETED', to_jsonb(upd), $2, $3, $4, $10::text FROM upd
)
SELECT * FROM upd
"""

RESTORE_SQL = f"""
WITH upd AS (
    UPDATE bookings
       SET delete_time = NULL, update_time = now(), version = version + 1,
           deleted_by_id = NULL, deleted_by_name = NULL, deleted_by_role = NULL, deletion_reason = ''
     WHERE id = $1 AND delete_time IS NOT NULL AND ($2::bigint IS NULL OR version = $2)
       AND (expire_time IS NULL OR expire_time > now())  -- an expired hold stays retired
    RETURNING *
), audit AS (
    {_AUDIT_INSERT}
    SELECT $3, upd.id, 'RESTORED', $4, $5, $6, '', to_jsonb(upd) FROM upd
), event AS (
    {_OUTBOX_INSERT}
    SELECT 'RESTORED', to_jsonb(upd), $4, $5, $6, $7::text FROM upd
)
SELECT * FROM upd
"""


def _hard_delete_sql(victims: str) -> str:
    """Permanently delete the soft-deleted bookings `victims` selects, erase every snapshot of them from the
    audit trail (its entries remain) and their notes from their change events in the outbox (the relay replaces
    their entries in the Redis stream before it publishes the HARD_DELETED event), and record a HARD_DELETED entry
    and event for each (the event carries the booking as it was, but for its notes, so subscribers can tell whose
    it was).

    Parameters: $1-$3 actor id, name and role, $4 reason, $5 audit entry id (NULL: a fresh one per booking),
    $6 the writer's traceparent (NULL: none); `victims` uses $7 onwards.
    """
    return f"""
WITH victims AS ({victims}),
del AS (
    DELETE FROM bookings b USING victims v WHERE b.id = v.id AND b.delete_time IS NOT NULL RETURNING b.*
), erase AS (  -- one row each; the final SELECT joins them, so they run (a SELECT CTE runs only when read)
    SELECT booking_audit_erase_snapshots(array_agg(id)) AS erased FROM del
), redact AS (
    SELECT booking_events_erase_notes(array_agg(id)) AS redacted FROM del
), audit AS (
    {_AUDIT_INSERT}
    SELECT coalesce($5::uuid, gen_random_uuid()), del.id, 'HARD_DELETED', $1, $2, $3, $4, NULL FROM del
), event AS (
    {_OUTBOX_INSERT}
    SELECT 'HARD_DELETED', to_jsonb(del) || '{{"notes": ""}}', $1, $2, $3, $6::text FROM del
)
SELECT del.id FROM del, erase, redact
"""


HARD_DELETE_SQL = _hard_delete_sql("SELECT $7::uuid AS id")
PURGE_BATCH_SQL = _hard_delete_sql(
    "SELECT id FROM bookings WHERE delete_time < $7 ORDER BY delete_time, id LIMIT $8 FOR UPDATE SKIP LOCKED"
)

PURGE_PREVIEW_SQL = """
SELECT count(*) OVER () AS total, id FROM bookings
 WHERE delete_time < $1 ORDER BY delete_time, id LIMIT $2
"""


@cache
def list_sql(*, customer: bool, provider: bool, overlaps: bool, after: bool, deleted: bool | None) -> str:
    """One statement per filter combination, so each gets a plan that can use its index.

    Parameters, in order: limit, then customer_id, provider_id, the interval's start and end, and the keyset
    position where used. deleted: None lists every booking, False only active ones, True only deleted ones
    (newest deletion first). The interval is matched first with the expression of the overlap constraint (a
    booking widened by its buffers), so a provider's active bookings in a window are found through that
    constraint's GiST index.
    """
    where, params = [], ["$1"]

    def param() -> str:
        params.append(f"${len(params) + 1}")
        return params[-1]

    if deleted is False:
        where.append("delete_time IS NULL AND (expire_time IS NULL OR expire_time > now())")
    elif deleted is None:  # an expired hold is listed once retired (deleted), never as active
        where.append("(delete_time IS NOT NULL OR expire_time IS NULL OR expire_time > now())")
    elif deleted is True:
        where.append("delete_time IS NOT NULL")
    if customer:
        where.append(f"customer_id = {param()}")
    if provider:
        where.append(f"provider_id = {param()}")
    if overlaps:
        window = f"tstzrange({param()}, {param()}, '[)')"
        # The constraint's expression first, a booking's reach (its index finds the candidates: buffers only
        # widen), then the booking's own time.
        where.append(f"booking_reach(start_time, end_time, buffer_before, buffer_after) && {window}")
        where.append(f"tstzrange(start_time, end_time, '[)') && {window}")
    if deleted is True:
        if after:
            where.append(f"(delete_time, id) < ({param()}, {param()})")
        order = "delete_time DESC, id DESC"
    else:
        if after:
            where.append(f"(start_time, id) > ({param()}, {param()})")
        order = "start_time, id"
    condition = " AND ".join(where) or "TRUE"
    return f"SELECT * FROM bookings WHERE {condition} ORDER BY {order} LIMIT $1"


# Parameters: $1 the booking, $2-$5 its new start, end, service and notes (NULL: kept; every one of them is NOT
# NULL), $6-$7 the caller's scope (NULL: any), $8 the version it must have (NULL: any), $9 the audit entry's id,
# $10-$12 the actor, $13 the update mask, $14 the traceparent, $15-$16 the request_id (NULL: none) and digest.
# Only the fields named are changed (NULL: kept; every one of them is NOT NULL). The row is locked first (`old`),
# so `previous_*` are the times this update replaced. The new time is checked by the overlap constraint in this
# statement: a taken slot fails it whole, and the booking stays where it was. Calls with the same caller and
# request_id are serialised as CreateBooking's are; a repeat finds the first's audit entry (`prior`) and
# changes nothing (a concurrent repeat that slipped past the lock fails on the request_id index, and is retried).
def _request_gate(actor: str, request_id: str) -> str:
    """CTEs `gate`, the caller's lock on its request_id (none without one), and `prior`, the audit entry of an
    earlier change this caller made under it: what UpdateBooking and ConfirmBooking answer a repeat with."""
    return f"""gate AS (
    SELECT count(*) FROM (
        SELECT pg_advisory_xact_lock(hashtextextended({actor}::text || '/' || {request_id}::text, 0))
         WHERE {request_id}::text IS NOT NULL
    ) locked
), prior AS (
    SELECT a.booking_id, a.request_digest FROM booking_audit a, gate
     WHERE {request_id}::text IS NOT NULL AND a.actor_id = {actor} AND a.request_id = {request_id}
)"""


UPDATE_SQL = f"""
WITH {_request_gate("$10", "$15")}, provider_gate AS (  -- a move takes its provider's lock, as CreateBooking does
    SELECT count(pg_advisory_xact_lock(hashtextextended('provider/' || provider_id, 0))) FROM bookings
     WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM prior) AND ($2::timestamptz IS NOT NULL OR $3::timestamptz IS NOT NULL)
), old AS (
    SELECT id, provider_id, start_time, end_time, buffer_before, buffer_after FROM bookings, provider_gate
     WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM prior)
       FOR UPDATE OF bookings
), {
    _retire_expired(
        "($2::timestamptz IS NOT NULL OR $3::timestamptz IS NOT NULL) AND b.id <> old.id"
        f" AND b.provider_id = old.provider_id AND {_HELD_REACH}"
        " && booking_reach(coalesce($2, old.start_time), coalesce($3, old.end_time), old.buffer_before,"
        " old.buffer_after)",
        using="old",
    )
}, upd AS (
    UPDATE bookings b
       SET start_time = coalesce($2::timestamptz, b.start_time),
           end_time = coalesce($3::timestamptz, b.end_time),
           service_id = coalesce($4::text, b.service_id),
           notes = coalesce($5::text, b.notes),
           update_time = now(), version = b.version + 1
      FROM old, (SELECT count(*) FROM expired) retired
     WHERE b.id = old.id AND b.delete_time IS NULL AND (b.expire_time IS NULL OR b.expire_time > now())
       AND ($6::text IS NULL OR b.customer_id = $6)
       AND ($7::text IS NULL OR b.provider_id = $7)
       AND ($8::bigint IS NULL OR b.version = $8)
    RETURNING b.*, old.start_time AS previous_start, old.end_time AS previous_end
), audit AS (
    INSERT INTO booking_audit (id, booking_id, action, actor_id, actor_name, actor_role, reason, snapshot,
                               update_mask, previous_start, previous_end, request_id, request_digest)
    SELECT $9, upd.id, 'UPDATED', $10, $11, $12, $17::text, to_jsonb(upd) - 'previous_start' - 'previous_end',
           $13::text[], upd.previous_start, upd.previous_end, $15::text, $16::text
      FROM upd
), event AS (
    {_OUTBOX_INSERT}
    SELECT 'UPDATED', to_jsonb(upd) - 'previous_start' - 'previous_end', $10, $11, $12, $14::text FROM upd
)
SELECT upd.*, prior.booking_id AS prior_booking_id, prior.request_digest AS prior_digest
  FROM (SELECT) AS one LEFT JOIN upd ON true LEFT JOIN prior ON true
"""

# ConfirmBooking: $1 the hold, $2 the version it must have (NULL: any), $3 its customer (NULL: any), $4 the
# notes (NULL: kept), $5 the audit entry's id, $6-$8 the actor, $9 the traceparent, $10-$11 the request_id
# (NULL: none) and digest. Only an active, unexpired hold is confirmed; a confirm racing its expiry waits on the
# row's lock and then finds it retired, or the expiry finds it confirmed: one outcome. A repeat of a request_id
# finds the first call's audit entry (`prior`) and changes nothing.
CONFIRM_SQL = f"""
WITH {_request_gate("$6", "$10")}, upd AS (
    UPDATE bookings b
       SET state = 'CONFIRMED', expire_time = NULL, notes = coalesce($4::text, b.notes),
           update_time = now(), version = b.version + 1
      FROM gate
     WHERE b.id = $1 AND NOT EXISTS (SELECT 1 FROM prior)
       AND b.state = 'HELD' AND b.delete_time IS NULL AND b.expire_time > now()
       AND ($2::bigint IS NULL OR b.version = $2)
       AND ($3::text IS NULL OR b.customer_id = $3)
    RETURNING b.*
), audit AS (
    INSERT INTO booking_audit (id, booking_id, action, actor_id, actor_name, actor_role, reason, snapshot,
                               request_id, request_digest)
    SELECT $5, upd.id, 'CONFIRMED', $6, $7, $8, '', to_jsonb(upd), $10::text, $11::text FROM upd
), event AS (
    {_OUTBOX_INSERT}
    SELECT 'CONFIRMED', to_jsonb(upd), $6, $7, $8, $9::text FROM upd
)
SELECT upd.*, prior.booking_id AS prior_booking_id, prior.request_digest AS prior_digest
  FROM (SELECT) AS one LEFT JOIN upd ON true LEFT JOIN prior ON true
"""

# The request a caller made under a request_id ($1 actor, $2 request_id), read with a fresh snapshot (after a
# concurrent repeat that the statement's own snapshot could not see).
PRIOR_REQUEST_SQL = "SELECT booking_id, request_digest FROM booking_audit WHERE actor_id = $1 AND request_id = $2"

# The sweep: retire up to $1 expired holds (oldest expiry first), those another sweep or write is not already
# retiring; returns how many.
SWEEP_HOLDS_SQL = f"""
WITH victims AS (
    SELECT id FROM bookings
     WHERE state = 'HELD' AND delete_time IS NULL AND expire_time <= now()
     ORDER BY expire_time LIMIT $1 FOR UPDATE SKIP LOCKED
), {_retire_expired("b.id IN (SELECT id FROM victims)")}
SELECT count(*) FROM expired
"""

SCHEDULE_SQL = "SELECT * FROM provider_schedules WHERE provider_id = $1"


def _schedule_json(row: str) -> str:
    """A schedule row as JSON with its durations in seconds: what its change events carry (svc_common.outbox)
    and what rows.schedule_from_json reads."""
    return f"""jsonb_build_object(
               'provider_id', {row}.provider_id, 'time_zone', {row}.time_zone, 'weekly_hours', {row}.weekly_hours,
               'date_overrides', {row}.date_overrides, 'version', {row}.version, 'update_time', {row}.update_time,
               'buffer_before', extract(epoch FROM {row}.buffer_before),
               'buffer_after', extract(epoch FROM {row}.buffer_after),
               'minimum_notice', extract(epoch FROM {row}.minimum_notice),
               'booking_horizon', extract(epoch FROM {row}.booking_horizon))"""


# What ListAvailableSlots needs in one round trip: $1's schedule (JSON, NULL: none) and what its active bookings
# take of [$2, $3) widened by the schedule's buffers (a new booking's reach), as the merged spans' starts and
# ends, found through the overlap constraint's index.
AVAILABILITY_SQL = f"""
WITH s AS (
    SELECT * FROM provider_schedules WHERE provider_id = $1
), w AS (
    SELECT tstzrange($2::timestamptz - coalesce((SELECT buffer_before FROM s), '0'),
                     $3::timestamptz + coalesce((SELECT buffer_after FROM s), '0'), '[)') AS around
), taken AS (
    SELECT unnest(coalesce(range_agg(booking_reach(b.start_time, b.end_time, b.buffer_before, b.buffer_after)),
                           '{{}}'::tstzmultirange)) AS span
      FROM bookings b, w
     WHERE b.provider_id = $1 AND b.delete_time IS NULL AND (b.expire_time IS NULL OR b.expire_time > now())
       AND booking_reach(b.start_time, b.end_time, b.buffer_before, b.buffer_after) && w.around
)
SELECT (SELECT {_schedule_json("s")} FROM s) AS schedule,
       array(SELECT lower(span) FROM taken ORDER BY 1) AS starts,
       array(SELECT upper(span) FROM taken ORDER BY 1) AS ends
"""

# A booking ($1) with its provider's schedule (JSON, NULL: none), for a move's availability check.
BOOKING_WITH_SCHEDULE_SQL = f"""
SELECT b.*, (SELECT {_schedule_json("s")} FROM provider_schedules s WHERE s.provider_id = b.provider_id) AS schedule
  FROM bookings b WHERE b.id = $1
"""

# Whether this caller has changed a schedule under this request_id ($1 actor, $2 request_id).
SCHEDULE_REQUEST_SQL = "SELECT provider_id FROM provider_schedule_audit WHERE actor_id = $1 AND request_id = $2"

# Write a schedule and its audit entry (the schedule before and after) in one statement. $1 provider, $2 time
# zone, $3-$4 weekly hours and overrides (JSON), $5-$8 buffer before, after, notice, horizon, $9 the version it
# must have (NULL: it must not exist yet), $10-$12 the actor, $13 the request_id (NULL: none), $14 the
# traceparent. No row: the schedule is not (or no longer) as the caller read it. Its change event goes into the
# outbox in the same statement, the schedule with its durations in seconds (svc_common.outbox reads it).
PUT_SCHEDULE_SQL = f"""
WITH old AS (
    SELECT * FROM provider_schedules WHERE provider_id = $1
), created AS (
    INSERT INTO provider_schedules (provider_id, time_zone, weekly_hours, date_overrides,
                                    buffer_before, buffer_after, minimum_notice, booking_horizon)
    SELECT $1, $2, $3::jsonb, $4::jsonb, $5, $6, $7, $8 WHERE $9::bigint IS NULL
    ON CONFLICT (provider_id) DO NOTHING
    RETURNING *
), updated AS (
    UPDATE provider_schedules
       SET time_zone = $2, weekly_hours = $3::jsonb, date_overrides = $4::jsonb, buffer_before = $5,
           buffer_after = $6, minimum_notice = $7, booking_horizon = $8, version = version + 1, update_time = now()
     WHERE provider_id = $1 AND version = $9::bigint
    RETURNING *
), new AS (
    SELECT * FROM created UNION ALL SELECT * FROM updated
), audit AS (
    INSERT INTO provider_schedule_audit (provider_id, action, actor_id, actor_name, actor_role, old_schedule,
                                         new_schedule, request_id)
    SELECT new.provider_id, CASE WHEN $9::bigint IS NULL THEN 'CREATED' ELSE 'UPDATED' END, $10, $11, $12,
           (SELECT to_jsonb(old) FROM old), to_jsonb(new), $13::text
      FROM new
), event AS (
    INSERT INTO booking_outbox (event_type, booking, actor_id, actor_name, actor_role, traceparent)
    SELECT CASE WHEN $9::bigint IS NULL THEN 'SCHEDULE_CREATED' ELSE 'SCHEDULE_UPDATED' END,
           {_schedule_json("new")},
           $10, $11, $12, $14::text
      FROM new
)
SELECT * FROM new
"""
