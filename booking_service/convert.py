"""Domain values into protobuf messages, for the servicer's responses. (Change events are encoded from the outbox's
rows by its read side's contract, svc_common.outbox, without the domain.)"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp
from google.type import interval_pb2

from booking_api.booking.v1 import booking_pb2
from booking_service.domain import Actor, AuditAction, AuditEntry, Booking, BookingState
from svc_common.principal import Role

ROLES = {Role.USER: booking_pb2.ROLE_USER, Role.PROVIDER: booking_pb2.ROLE_PROVIDER, Role.ADMIN: booking_pb2.ROLE_ADMIN}
AUDIT_ACTIONS = {
    AuditAction.CREATED: booking_pb2.AUDIT_ACTION_CREATED,
    AuditAction.DELETED: booking_pb2.AUDIT_ACTION_DELETED,
    AuditAction.RESTORED: booking_pb2.AUDIT_ACTION_RESTORED,
    AuditAction.HARD_DELETED: booking_pb2.AUDIT_ACTION_HARD_DELETED,
    AuditAction.UPDATED: booking_pb2.AUDIT_ACTION_UPDATED,
    AuditAction.HELD: booking_pb2.AUDIT_ACTION_HELD,
    AuditAction.CONFIRMED: booking_pb2.AUDIT_ACTION_CONFIRMED,
    AuditAction.EXPIRED: booking_pb2.AUDIT_ACTION_EXPIRED,
}
STATES = {
    BookingState.CONFIRMED: booking_pb2.BOOKING_STATE_CONFIRMED,
    BookingState.HELD: booking_pb2.BOOKING_STATE_HELD,
}


def timestamp_to_proto(value: datetime) -> Timestamp:
    """An aware time (from 1970 on, as every time here is) as a Timestamp; built from its fields, which costs a
    third of Timestamp.FromDatetime (a month of slot starts is over a thousand of them)."""
    return Timestamp(seconds=(value - _EPOCH) // _SECOND, nanos=value.microsecond * 1000)  # exact, unlike a float


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND = timedelta(seconds=1)


def interval_to_proto(start: datetime, end: datetime) -> interval_pb2.Interval:
    return interval_pb2.Interval(start_time=timestamp_to_proto(start), end_time=timestamp_to_proto(end))


def actor_to_proto(actor: Actor) -> booking_pb2.Actor:
    return booking_pb2.Actor(id=actor.id, name=actor.name, role=ROLES[actor.role])


def booking_to_proto(booking: Booking) -> booking_pb2.Booking:
    message = booking_pb2.Booking(
        id=booking.id,
        customer_id=booking.customer_id,
        provider_id=booking.provider_id,
        service_id=booking.service_id,
        start_time=timestamp_to_proto(booking.start_time),
        end_time=timestamp_to_proto(booking.end_time),
        notes=booking.notes,
        create_time=timestamp_to_proto(booking.create_time),
        update_time=timestamp_to_proto(booking.update_time),
        deletion_reason=booking.deletion_reason,
        etag=booking.etag,
        state=STATES[booking.state],
    )
    if booking.expire_time is not None:
        message.expire_time.CopyFrom(timestamp_to_proto(booking.expire_time))
    if booking.delete_time is not None:
        message.delete_time.CopyFrom(timestamp_to_proto(booking.delete_time))
    if booking.deleted_by is not None:
        message.deleted_by.CopyFrom(actor_to_proto(booking.deleted_by))
    return message


def audit_to_proto(entry: AuditEntry) -> booking_pb2.AuditEntry:
    message = booking_pb2.AuditEntry(
        id=entry.id,
        booking_id=entry.booking_id,
        action=AUDIT_ACTIONS[entry.action],
        actor=actor_to_proto(entry.actor),
        reason=entry.reason,
        create_time=timestamp_to_proto(entry.create_time),
    )
    if entry.snapshot is not None:
        message.snapshot.CopyFrom(booking_to_proto(entry.snapshot))
    if entry.update_mask:
        message.update_mask.paths.extend(entry.update_mask)
    if entry.previous_time is not None:
        message.previous_time.CopyFrom(interval_to_proto(*entry.previous_time))
    return message
