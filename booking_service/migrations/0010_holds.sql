-- Holds (HoldSlot): a booking in state HELD occupies its slot, in the same overlap constraint as any booking,
-- until its expire_time. An expired hold is retired (soft-deleted, audit action and event EXPIRED) by the first
-- write that needs its slot or by the sweep, whichever comes first; it keeps state HELD and its expire_time, so
-- a restore can tell it expired. A confirmed hold is CONFIRMED with no expire_time.
ALTER TABLE bookings
    ADD COLUMN state text NOT NULL DEFAULT 'CONFIRMED' CHECK (state IN ('CONFIRMED', 'HELD')),
    ADD COLUMN expire_time timestamptz,
    ADD CONSTRAINT bookings_hold_expiry CHECK ((state = 'HELD') = (expire_time IS NOT NULL));

-- The sweep's next victims, and the unexpired holds counted against HOLDS_MAX_PER_CUSTOMER / _PER_PROVIDER.
CREATE INDEX bookings_holds_expiring ON bookings (expire_time) WHERE state = 'HELD' AND delete_time IS NULL;
CREATE INDEX bookings_holds_by_customer ON bookings (customer_id, expire_time)
    WHERE state = 'HELD' AND delete_time IS NULL;
CREATE INDEX bookings_holds_by_provider ON bookings (provider_id, expire_time)
    WHERE state = 'HELD' AND delete_time IS NULL;

-- How many unexpired holds a customer and a provider have, counted with a snapshot taken when it is called
-- (plpgsql, VOLATILE: each query sees what committed before it), not when the calling statement began: HoldSlot
-- calls it after taking the customer's and the provider's locks, so it sees every hold committed by whoever
-- held them before.
CREATE FUNCTION booking_unexpired_holds(customer text, provider text) RETURNS bigint[]
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RETURN ARRAY[
        (SELECT count(*) FROM bookings
          WHERE customer_id = customer AND state = 'HELD' AND delete_time IS NULL AND expire_time > now()),
        (SELECT count(*) FROM bookings
          WHERE provider_id = provider AND state = 'HELD' AND delete_time IS NULL AND expire_time > now())
    ];
END
$$;
REVOKE ALL ON FUNCTION booking_unexpired_holds(text, text) FROM PUBLIC;

ALTER TABLE booking_audit DROP CONSTRAINT booking_audit_action_check;
ALTER TABLE booking_audit ADD CONSTRAINT booking_audit_action_check
    CHECK (action IN ('CREATED', 'DELETED', 'RESTORED', 'HARD_DELETED', 'UPDATED', 'HELD', 'CONFIRMED', 'EXPIRED'));
ALTER TABLE booking_outbox DROP CONSTRAINT booking_outbox_event_type_check;
ALTER TABLE booking_outbox ADD CONSTRAINT booking_outbox_event_type_check
    CHECK (event_type IN ('CREATED', 'DELETED', 'RESTORED', 'HARD_DELETED', 'UPDATED', 'SEAM',
                          'SCHEDULE_CREATED', 'SCHEDULE_UPDATED', 'HELD', 'CONFIRMED', 'EXPIRED'));
