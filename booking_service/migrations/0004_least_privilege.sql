-- Hard delete erases the snapshots of the bookings it removes through this function, so the service's role
-- needs no UPDATE on the audit trail (see schema.py). It erases only snapshots of bookings that are deleted
-- (soft-deleted or already gone), never those of an active booking.
CREATE FUNCTION booking_audit_erase_snapshots(ids uuid[]) RETURNS bigint
    LANGUAGE sql SECURITY DEFINER SET search_path FROM CURRENT AS $$
    WITH erased AS (
        UPDATE booking_audit a SET snapshot = NULL
         WHERE a.booking_id = ANY (ids) AND a.snapshot IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM bookings b WHERE b.id = a.booking_id AND b.delete_time IS NULL)
        RETURNING 1
    )
    SELECT count(*) FROM erased
$$;
REVOKE ALL ON FUNCTION booking_audit_erase_snapshots(uuid[]) FROM PUBLIC;
