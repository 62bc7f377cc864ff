-- Transactional outbox: every write statement inserts its change event here, in the same transaction as the
-- booking row and its audit entry. The relay gives each committed event its place in the stream (seq, gapless,
-- in commit order per booking), publishes it to Redis and marks it published (published_seq below).
CREATE TABLE booking_outbox (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_type  text NOT NULL CHECK (event_type IN ('CREATED', 'DELETED', 'RESTORED', 'HARD_DELETED')),
    booking     jsonb NOT NULL,
    actor_id    text NOT NULL,
    actor_name  text NOT NULL,
    actor_role  text NOT NULL,
    occur_time  timestamptz NOT NULL DEFAULT now(),
    seq         bigint UNIQUE,
    stream_ms   bigint
);
CREATE INDEX booking_outbox_unsequenced ON booking_outbox (id) WHERE seq IS NULL;

-- The relay's durable marks, updated at most about once a second (a row updated on every round would bloat
-- with dead versions faster than autovacuum removes them): published_seq, the last seq known to be in Redis;
-- last_seq and last_ms, the newest position handed out, kept for when old events are deleted from the outbox.
CREATE TABLE booking_outbox_state (
    singleton     boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    last_seq      bigint NOT NULL,
    last_ms       bigint NOT NULL,
    published_seq bigint NOT NULL
);
INSERT INTO booking_outbox_state (last_seq, last_ms, published_seq) VALUES (0, 0, 0);
