-- Bookings, with soft delete, and their append-only audit trail.
CREATE EXTENSION IF NOT EXISTS btree_gist;

CREATE TABLE bookings (
    id              uuid PRIMARY KEY,
    customer_id     text NOT NULL,
    provider_id     text NOT NULL,
    service_id      text NOT NULL,
    start_time      timestamptz NOT NULL,
    end_time        timestamptz NOT NULL,
    notes           text NOT NULL DEFAULT '',
    create_time     timestamptz NOT NULL DEFAULT now(),
    update_time     timestamptz NOT NULL DEFAULT now(),
    version         bigint NOT NULL DEFAULT 1,
    delete_time     timestamptz,
    deleted_by_id   text,
    deleted_by_name text,
    deleted_by_role text,
    deletion_reason text NOT NULL DEFAULT '',
    created_by      text NOT NULL,
    request_id      text,
    CONSTRAINT bookings_time_order CHECK (end_time > start_time),
    -- No two active bookings of one provider overlap; soft-deleted ones free their slot.
    CONSTRAINT bookings_no_overlap EXCLUDE USING gist (
        provider_id WITH =,
        tstzrange(start_time, end_time, '[)') WITH &&
    ) WHERE (delete_time IS NULL)
);

-- CreateBooking idempotency: one booking per caller and request_id.
CREATE UNIQUE INDEX bookings_request_id ON bookings (created_by, request_id) WHERE request_id IS NOT NULL;
CREATE INDEX bookings_by_start ON bookings (start_time, id);
CREATE INDEX bookings_by_customer ON bookings (customer_id, start_time, id);
CREATE INDEX bookings_by_provider ON bookings (provider_id, start_time, id);
CREATE INDEX bookings_deleted ON bookings (delete_time DESC, id DESC) WHERE delete_time IS NOT NULL;

CREATE TABLE booking_audit (
    seq         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id          uuid NOT NULL UNIQUE,
    booking_id  uuid NOT NULL,
    action      text NOT NULL CHECK (action IN ('CREATED', 'DELETED', 'RESTORED', 'HARD_DELETED')),
    actor_id    text NOT NULL,
    actor_name  text NOT NULL,
    actor_role  text NOT NULL,
    reason      text NOT NULL DEFAULT '',
    create_time timestamptz NOT NULL DEFAULT now(),
    snapshot    jsonb
);
CREATE INDEX booking_audit_by_booking ON booking_audit (booking_id, seq);

-- Audit entries are append-only; the one change allowed is erasing a snapshot (hard delete).
CREATE FUNCTION booking_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.snapshot IS NULL
       AND (NEW.seq, NEW.id, NEW.booking_id, NEW.action, NEW.actor_id, NEW.actor_name, NEW.actor_role,
            NEW.reason, NEW.create_time)
           IS NOT DISTINCT FROM
           (OLD.seq, OLD.id, OLD.booking_id, OLD.action, OLD.actor_id, OLD.actor_name, OLD.actor_role,
            OLD.reason, OLD.create_time) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'booking_audit is append-only (% refused)', TG_OP USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER booking_audit_append_only
    BEFORE UPDATE OR DELETE ON booking_audit
    FOR EACH ROW EXECUTE FUNCTION booking_audit_append_only();
CREATE TRIGGER booking_audit_no_truncate
    BEFORE TRUNCATE ON booking_audit
    FOR EACH STATEMENT EXECUTE FUNCTION booking_audit_append_only();
