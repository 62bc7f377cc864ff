-- UpdateBooking (a booking's time, service or notes changed in place): a new audit action and event type, and
-- what an UPDATED audit entry keeps besides its snapshot: the fields it changed, the booking's time before it,
-- and, for an idempotent call, the caller's request_id with a digest of the change it asked for.
ALTER TABLE booking_audit DROP CONSTRAINT booking_audit_action_check;
ALTER TABLE booking_audit ADD CONSTRAINT booking_audit_action_check
    CHECK (action IN ('CREATED', 'DELETED', 'RESTORED', 'HARD_DELETED', 'UPDATED'));
ALTER TABLE booking_outbox DROP CONSTRAINT booking_outbox_event_type_check;
ALTER TABLE booking_outbox ADD CONSTRAINT booking_outbox_event_type_check
    CHECK (event_type IN ('CREATED', 'DELETED', 'RESTORED', 'HARD_DELETED', 'UPDATED'));

ALTER TABLE booking_audit
    ADD COLUMN update_mask    text[],
    ADD COLUMN previous_start timestamptz,
    ADD COLUMN previous_end   timestamptz,
    ADD COLUMN request_id     text,
    ADD COLUMN request_digest text;
-- One update per caller and request_id: a concurrent repeat fails here and, retried, finds the first.
CREATE UNIQUE INDEX booking_audit_request_id ON booking_audit (actor_id, request_id) WHERE request_id IS NOT NULL;

-- Append-only, now over every column but the snapshot (the columns above included): the one change allowed is
-- still erasing a snapshot.
CREATE OR REPLACE FUNCTION booking_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.snapshot IS NULL
       AND to_jsonb(NEW) - 'snapshot' IS NOT DISTINCT FROM to_jsonb(OLD) - 'snapshot' THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'booking_audit is append-only (% refused)', TG_OP USING ERRCODE = 'insufficient_privilege';
END;
$$;
