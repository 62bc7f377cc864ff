-- The trace context of the write that made each change (svc_common.tracing), carried in its change event;
-- NULL when the writer did not trace.
ALTER TABLE booking_outbox ADD COLUMN traceparent text;
ALTER TABLE booking_outbox_dead ADD COLUMN traceparent text;
