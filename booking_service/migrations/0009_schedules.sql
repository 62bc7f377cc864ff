-- Provider schedules (working hours and date overrides in the provider's time zone, buffers, notice, horizon),
-- their append-only audit trail, and the buffers each booking was made with, enforced by the overlap
-- constraint: two active bookings of one provider are at least (first's buffer_after + second's buffer_before)
-- apart, under any concurrency.
CREATE TABLE provider_schedules (
    provider_id     text PRIMARY KEY,
    time_zone       text NOT NULL,
    weekly_hours    jsonb NOT NULL DEFAULT '[]',   -- [{"day": 1-7, "start": s, "end": s}], seconds since midnight
    date_overrides  jsonb NOT NULL DEFAULT '[]',   -- [{"date": "YYYY-MM-DD", "hours": [{"start": s, "end": s}]}]
    buffer_before   interval NOT NULL DEFAULT '0',
    buffer_after    interval NOT NULL DEFAULT '0',
    minimum_notice  interval NOT NULL DEFAULT '0',
    booking_horizon interval NOT NULL DEFAULT '0',
    version         bigint NOT NULL DEFAULT 1,
    update_time     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT provider_schedules_buffers CHECK (
        buffer_before >= '0' AND buffer_after >= '0' AND minimum_notice >= '0' AND booking_horizon >= '0'
    )
);

CREATE TABLE provider_schedule_audit (
    seq            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    provider_id    text NOT NULL,
    action         text NOT NULL CHECK (action IN ('CREATED', 'UPDATED')),
    actor_id       text NOT NULL,
    actor_name     text NOT NULL,
    actor_role     text NOT NULL,
    occur_time     timestamptz NOT NULL DEFAULT now(),
    old_schedule   jsonb,
    new_schedule   jsonb NOT NULL,
    request_id     text
);
CREATE INDEX provider_schedule_audit_by_provider ON provider_schedule_audit (provider_id, seq);
-- One change per caller and request_id: a repeat finds the first.
CREATE UNIQUE INDEX provider_schedule_audit_request_id
    ON provider_schedule_audit (actor_id, request_id) WHERE request_id IS NOT NULL;

-- Buffers are kept as hours, minutes and seconds only (no days or months, whose length depends on the time
-- zone): a booking's reach, the time it blocks, is then the same whatever the session's TimeZone, which is
-- what lets the overlap constraint's index use it (IMMUTABLE).
ALTER TABLE bookings
    ADD COLUMN buffer_before interval NOT NULL DEFAULT '0'
        CHECK (buffer_before >= '0' AND date_part('day', buffer_before) = 0 AND date_part('month', buffer_before) = 0),
    ADD COLUMN buffer_after interval NOT NULL DEFAULT '0'
        CHECK (buffer_after >= '0' AND date_part('day', buffer_after) = 0 AND date_part('month', buffer_after) = 0);

CREATE FUNCTION booking_reach(start_time timestamptz, end_time timestamptz, before interval, after interval)
RETURNS tstzrange LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT tstzrange(start_time - before, end_time + after, '[)') $$;

-- The overlap constraint compares the bookings' reaches (with no buffers, their times, as before).
ALTER TABLE bookings DROP CONSTRAINT bookings_no_overlap;
ALTER TABLE bookings ADD CONSTRAINT bookings_no_overlap EXCLUDE USING gist (
    provider_id WITH =,
    booking_reach(start_time, end_time, buffer_before, buffer_after) WITH &&
) WHERE (delete_time IS NULL);

-- A schedule's change is an event on the stream too (booking_outbox.booking holds the schedule as
-- svc_common.outbox reads it), so views of free slots can refresh.
ALTER TABLE booking_outbox DROP CONSTRAINT booking_outbox_event_type_check;
ALTER TABLE booking_outbox ADD CONSTRAINT booking_outbox_event_type_check
    CHECK (event_type IN ('CREATED', 'DELETED', 'RESTORED', 'HARD_DELETED', 'UPDATED', 'SEAM',
                          'SCHEDULE_CREATED', 'SCHEDULE_UPDATED'));
