-- Hard delete erases a booking's notes (its personal free text) from its change events too: the outbox rows the
-- relay publishes from and republishes from, and the dead letters. The relay then replaces the booking's entries
-- in the Redis stream (booking_service.relay). Found by booking id through this index.
CREATE INDEX booking_outbox_booking ON booking_outbox ((booking->>'id'));
CREATE INDEX booking_outbox_dead_booking ON booking_outbox_dead ((booking->>'id'));

-- Through an owner-defined function, as for the audit trail's snapshots, so the service's role needs no UPDATE on
-- the dead letters. It erases only notes of bookings that are deleted (soft-deleted or already gone).
CREATE FUNCTION booking_events_erase_notes(ids uuid[]) RETURNS bigint
    LANGUAGE sql SECURITY DEFINER SET search_path FROM CURRENT AS $$
    WITH victims AS (
        SELECT id::text AS id FROM unnest(ids) AS t (id)
         WHERE NOT EXISTS (SELECT 1 FROM bookings b WHERE b.id = t.id AND b.delete_time IS NULL)
    ), outbox AS (
        UPDATE booking_outbox o SET booking = o.booking || '{"notes": ""}'
          FROM victims v WHERE o.booking->>'id' = v.id AND o.booking->>'notes' <> ''
        RETURNING 1
    ), dead AS (
        UPDATE booking_outbox_dead d SET booking = d.booking || '{"notes": ""}'
          FROM victims v WHERE d.booking->>'id' = v.id AND d.booking->>'notes' <> ''
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM outbox) + (SELECT count(*) FROM dead)
$$;
REVOKE ALL ON FUNCTION booking_events_erase_notes(uuid[]) FROM PUBLIC;
