-- A seam: where the stream's positions jump on purpose, because the database the relay now works on may lack
-- events that were already published or read (a failover to a standby missing the primary's last transactions).
-- The relay places one SEAM row past everything anyone may have seen before it places anything else, so no
-- position is ever handed out twice (booking_service.relay). Readers pass over a seam as the continuation of
-- whatever came before it (svc_common.eventstream).
ALTER TABLE booking_outbox DROP CONSTRAINT booking_outbox_event_type_check;
ALTER TABLE booking_outbox ADD CONSTRAINT booking_outbox_event_type_check
    CHECK (event_type IN ('CREATED', 'DELETED', 'RESTORED', 'HARD_DELETED', 'UPDATED', 'SEAM'));

-- The PostgreSQL timeline the relay last placed events on: a different one means a promotion happened since
-- (NULL: not recorded yet).
ALTER TABLE booking_outbox_state ADD COLUMN timeline bigint;
