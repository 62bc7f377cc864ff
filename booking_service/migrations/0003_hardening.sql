-- Booking times stay where PostgreSQL and the services agree (see domain.EARLIEST_TIME/LATEST_TIME): the API
-- refuses others, and this refuses them from anyone else. NOT VALID: rows written before are not rechecked.
ALTER TABLE bookings ADD CONSTRAINT bookings_time_range
    CHECK (start_time >= '1970-01-01T00:00:00Z' AND end_time < '9999-01-01T00:00:00Z') NOT VALID;

-- Change events the relay could not publish (a row it cannot read back, say): set aside here with the error, for
-- an operator to inspect, so that no single row stops the events of everyone after it. Its place in the stream
-- is published as an entry without an event, which readers pass over.
CREATE TABLE booking_outbox_dead (
    seq         bigint PRIMARY KEY,
    stream_ms   bigint NOT NULL,
    outbox_id   bigint NOT NULL,
    event_type  text NOT NULL,
    booking     jsonb NOT NULL,
    actor_id    text NOT NULL,
    actor_name  text NOT NULL,
    actor_role  text NOT NULL,
    occur_time  timestamptz NOT NULL,
    error       text NOT NULL,
    dead_time   timestamptz NOT NULL DEFAULT now()
);
