-- Transactional outbox: every write statement inserts its change event here, in the same transaction as the
-- booking row and its audit entry. The relay gives each committed event its place in the stream (seq, gapless,
-- in commit order per booking), publishes it to Redis and marks it published.
CREATE TABLE booking_outbox (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_type   text NOT NULL CHECK (event_type IN ('CREATED', 'DELETED', 'RESTORED', 'HARD_DELETED')),
    booking      jsonb NOT NULL,
    actor_id     text NOT NULL,
    actor_name   text NOT NULL,
    actor_role   text NOT NULL,
    occur_time   timestamptz NOT NULL DEFAULT now(),
    seq          bigint UNIQUE,
    stream_ms    bigint,
    publish_time timestamptz
);
CREATE INDEX booking_outbox_unsequenced ON booking_outbox (id) WHERE seq IS NULL;
CREATE INDEX booking_outbox_unpublished ON booking_outbox (seq) WHERE publish_time IS NULL AND seq IS NOT NULL;
CREATE INDEX booking_outbox_published ON booking_outbox (publish_time) WHERE publish_time IS NOT NULL;

-- The relay's position: the last seq handed out and the stream time it used (stream ids never go back).
CREATE TABLE booking_outbox_state (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    last_seq  bigint NOT NULL,
    last_ms   bigint NOT NULL
);
INSERT INTO booking_outbox_state (last_seq, last_ms) VALUES (0, 0);

-- Wake the relay when events commit (PostgreSQL delivers notifications at commit, one per transaction
-- however many rows notified).
CREATE FUNCTION booking_outbox_wake() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('booking_outbox', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER booking_outbox_wake
    AFTER INSERT ON booking_outbox
    FOR EACH ROW EXECUTE FUNCTION booking_outbox_wake();
