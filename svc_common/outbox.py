"""The outbox's read side: the contract between booking_service, which writes `booking_outbox` and places its
events (gives each its stream position: booking_service.outbox), and every reader of placed events: the relay,
which publishes them to the Redis stream (booking_service.relay), and notify's fallback, which reads them while
Redis cannot be read (notify_service.fallback).

It fixes the columns of a placed event, the SQL that reads placed events (after a position, at one, the
newest), the channel the relay notifies while the outbox is ahead of the stream, and the encoding of a row
into its stream entry's fields (svc_common.eventstream), straight from the stored JSON to the BookingEvent's
bytes. Both readers encode with `PlacedRow.entry_fields` (a row that cannot be encoded included), so the relay's
entries and the fallback's are the same bytes. A reader needs SELECT on booking_outbox and booking_outbox_state only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from google.protobuf import duration_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from google.type import date_pb2, timeofday_pb2

from booking_api.booking.v1 import booking_pb2, events_pb2
from svc_common import eventstream as stream
from svc_common.eventstream import EventId

# Sent (by the relay, at commit) while placed events are not published: "<newest seq> <oldest unpublished ms>".
PLACED_CHANNEL = "booking_outbox_placed"

EVENT_COLUMNS = (
    "seq, stream_ms, event_type, booking, booking->>'id' AS booking_id, actor_id, actor_name, actor_role, occur_time, "
    "traceparent"
)

# The newest position handed out: the outbox's highest seq, or the mark kept for when old rows are deleted.
TOP = """
    SELECT seq, stream_ms FROM (
        (SELECT seq, stream_ms FROM booking_outbox WHERE seq IS NOT NULL ORDER BY seq DESC LIMIT 1)
        UNION ALL
        SELECT last_seq, last_ms FROM booking_outbox_state
    ) known ORDER BY seq DESC LIMIT 1
"""

# $1: the seq to read after; $2: how many. Placed events in stream order.
AFTER_SQL = f"SELECT {EVENT_COLUMNS} FROM booking_outbox WHERE seq > $1 ORDER BY seq LIMIT $2"

# The event at one position, if the outbox still has it ($1: seq, $2: stream_ms).
AT_SQL = "SELECT 1 FROM booking_outbox WHERE seq = $1 AND stream_ms = $2"

# The newest position handed out.
TOP_SQL = f"SELECT seq, stream_ms FROM ({TOP}) t"

# The newest position the relay has marked published (it is in the stream), while the outbox still holds it.
PUBLISHED_SQL = """
SELECT o.seq, o.stream_ms FROM booking_outbox_state s JOIN booking_outbox o ON o.seq = s.published_seq
"""

SKIPPED_REASON_MAX = 1000  # characters of the error kept in the placeholder of a row that cannot be encoded
HARD_DELETED = "HARD_DELETED"
SEAM = "SEAM"  # a row that is no event: where positions jump after a failover (svc_common.eventstream: seams)
_EVENT_TYPES = {
    "CREATED": events_pb2.BOOKING_EVENT_TYPE_CREATED,
    "DELETED": events_pb2.BOOKING_EVENT_TYPE_DELETED,
    "RESTORED": events_pb2.BOOKING_EVENT_TYPE_RESTORED,
    HARD_DELETED: events_pb2.BOOKING_EVENT_TYPE_HARD_DELETED,
    "UPDATED": events_pb2.BOOKING_EVENT_TYPE_UPDATED,
    "HELD": events_pb2.BOOKING_EVENT_TYPE_HELD,
    "CONFIRMED": events_pb2.BOOKING_EVENT_TYPE_CONFIRMED,
    "EXPIRED": events_pb2.BOOKING_EVENT_TYPE_EXPIRED,
}
_TYPE_NAMES = {number: name for name, number in _EVENT_TYPES.items()}
_SCHEDULE_TYPES = {
    "SCHEDULE_CREATED": events_pb2.SCHEDULE_EVENT_TYPE_CREATED,
    "SCHEDULE_UPDATED": events_pb2.SCHEDULE_EVENT_TYPE_UPDATED,
}
_STATES = {"CONFIRMED": booking_pb2.BOOKING_STATE_CONFIRMED, "HELD": booking_pb2.BOOKING_STATE_HELD}
_ROLES = {"user": booking_pb2.ROLE_USER, "provider": booking_pb2.ROLE_PROVIDER, "admin": booking_pb2.ROLE_ADMIN}


def change_key(event_type: str, booking_id: str, version: object) -> str:
    """What tells one change from every other, whatever position it is given: its type, its booking, and the
    booking's version after it. A primary that took over may place again a change its predecessor had placed
    (the standby got the change's commit but not its placing): the relay and notify know it by this."""
    return f"{event_type} {booking_id} {version}"


def change_of(event: events_pb2.BookingEvent) -> str:
    """The change key of an event as the stream carries it."""
    return change_key(_TYPE_NAMES.get(event.type, str(event.type)), event.booking.id, event.booking.etag.strip('"'))


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECONDS = range(-62_135_596_800, 253_402_300_800)  # a Timestamp's: 0001-01-01 to 9999-12-31, UTC
Fields = dict[str, Any]  # a message's fields as its constructor takes them


# The encoding builds each event from dicts of fields, handed to the constructors at once: with upb that is 3-4x
# cheaper than protobuf's Timestamp.FromDatetime (pure Python) and building submessages to copy in, and this
# encoding is most of the relay's CPU per event (docs/capacity.md).
def _stamp(value: datetime | str) -> Fields:
    """A Timestamp of a stored time: an aware datetime, or ISO text as to_jsonb writes it (naive: UTC, as
    Timestamp.FromDatetime reads it); ValueError for text no datetime spells (`infinity`, year 10000) and for a
    time outside a Timestamp's range (year 1 or 9999 at an offset that takes it past either end in UTC)."""
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - _EPOCH
    seconds = delta.days * 86_400 + delta.seconds
    if seconds not in _SECONDS:
        raise ValueError(f"{moment.isoformat()} is outside the range of a Timestamp")
    return {"seconds": seconds, "nanos": delta.microseconds * 1000}


def _actor(actor_id: str, name: str, role: str) -> Fields:
    return {"id": actor_id, "name": name, "role": _ROLES[role]}


def booking_fields(data: dict[str, Any]) -> Fields:
    """A booking as stored in the outbox (`to_jsonb` of its row) as the API shows it (a Booking's fields)."""
    start, end = _stamp(data["start_time"]), _stamp(data["end_time"])  # first: the values most likely out of range
    fields: Fields = {
        "id": data["id"],
        "customer_id": data["customer_id"],
        "provider_id": data["provider_id"],
        "service_id": data["service_id"],
        "start_time": start,
        "end_time": end,
        "notes": data["notes"],
        "create_time": _stamp(data["create_time"]),
        "update_time": _stamp(data["update_time"]),
        "deletion_reason": data["deletion_reason"],
        "etag": f'"{data["version"]}"',
        "state": _STATES[data.get("state", "CONFIRMED")],  # rows written before holds have none
    }
    if data.get("expire_time"):
        fields["expire_time"] = _stamp(data["expire_time"])
    if data.get("delete_time"):
        fields["delete_time"] = _stamp(data["delete_time"])
    if data.get("deleted_by_id") is not None:
        fields["deleted_by"] = _actor(data["deleted_by_id"], data["deleted_by_name"], data["deleted_by_role"])
    return fields


def _time_of_day(seconds: int) -> timeofday_pb2.TimeOfDay:
    return timeofday_pb2.TimeOfDay(hours=seconds // 3600, minutes=seconds % 3600 // 60, seconds=seconds % 60)


def _seconds(value: float) -> duration_pb2.Duration:
    made = duration_pb2.Duration()
    made.FromTimedelta(timedelta(seconds=value))
    return made


def schedule_message(data: dict[str, Any]) -> booking_pb2.ProviderSchedule:
    """A schedule as its change event stores it (booking_service.sql: PUT_SCHEDULE_SQL) as the API shows it."""
    return booking_pb2.ProviderSchedule(
        provider_id=data["provider_id"],
        time_zone=data["time_zone"],
        weekly_hours=[
            booking_pb2.WorkingHours(day=w["day"], start=_time_of_day(w["start"]), end=_time_of_day(w["end"]))
            for w in data["weekly_hours"]
        ],
        date_overrides=[
            booking_pb2.DateOverride(
                date=_date(o["date"]),
                hours=[
                    booking_pb2.LocalHours(start=_time_of_day(h["start"]), end=_time_of_day(h["end"]))
                    for h in o["hours"]
                ],
            )
            for o in data["date_overrides"]
        ],
        buffer_before=_seconds(float(data["buffer_before"])),
        buffer_after=_seconds(float(data["buffer_after"])),
        minimum_notice=_seconds(float(data["minimum_notice"])),
        booking_horizon=_seconds(float(data["booking_horizon"])),
        update_time=Timestamp(**_stamp(data["update_time"])),
        etag=f'"{data["version"]}"',
    )


def _date(text: str) -> date_pb2.Date:
    day = date.fromisoformat(text)
    return date_pb2.Date(year=day.year, month=day.month, day=day.day)


@dataclass(frozen=True, slots=True)
class PlacedRow:
    """An outbox row (EVENT_COLUMNS) with its place in the stream, as stored. Encoding it may fail for a row no
    reader can represent (the relay sets it aside, readers pass over its place), and that must not stop the rows
    after it."""

    event_id: EventId
    record: Any  # an asyncpg Record, or any mapping of EVENT_COLUMNS

    @classmethod
    def of(cls, record: Any) -> PlacedRow:
        return cls(EventId(record["stream_ms"], record["seq"]), record)

    @property
    def erases(self) -> bool:
        """Whether this event erases its booking's earlier events (their notes) from the stream."""
        return bool(self.record["event_type"] == HARD_DELETED)

    @property
    def seam(self) -> bool:
        """Whether this row is a seam (no event; positions jump here on purpose)."""
        return bool(self.record["event_type"] == SEAM)

    def message(self) -> events_pb2.BookingEvent:
        booking = booking_fields(json.loads(self.record["booking"]))
        return events_pb2.BookingEvent(**self._event(_EVENT_TYPES, booking=booking))

    def schedule_message(self) -> events_pb2.ScheduleEvent:
        schedule = schedule_message(json.loads(self.record["booking"]))
        return events_pb2.ScheduleEvent(**self._event(_SCHEDULE_TYPES, schedule=schedule))

    def _event(self, types: Mapping[str, int], **body: Any) -> Fields:
        """The fields every event has (its id, type, actor, time and trace), with `body` (what it is about)."""
        record = self.record
        return {
            "event_id": str(self.event_id),
            "type": types[record["event_type"]],
            **body,
            "actor": _actor(record["actor_id"], record["actor_name"], record["actor_role"]),
            "occur_time": _stamp(record["occur_time"]),
            "traceparent": record["traceparent"] or "",
        }

    def fields(self) -> dict[bytes, bytes]:
        """The stream entry's fields: the event's bytes, and what subscribers are filtered on (a seam: where it
        jumped from, and why)."""
        if self.seam:
            seam = json.loads(self.record["booking"])
            return {stream.FIELD_SEAM: f"after {seam['after']}: {seam['reason']}".encode()}
        if self.record["event_type"] in _SCHEDULE_TYPES:
            schedule = self.schedule_message()
            return {
                stream.FIELD_SCHEDULE: schedule.SerializeToString(),
                stream.FIELD_PROVIDER: schedule.schedule.provider_id.encode(),
            }
        event = self.message()
        return {
            stream.FIELD_EVENT: event.SerializeToString(),
            stream.FIELD_CUSTOMER: event.booking.customer_id.encode(),
            stream.FIELD_PROVIDER: event.booking.provider_id.encode(),
            stream.FIELD_BOOKING: event.booking.id.encode(),
        }

    def entry_fields(self) -> tuple[dict[bytes, bytes], str | None]:
        """The stream entry's fields, and None; or, for a row that cannot be encoded, the placeholder that keeps
        its place (readers pass over it: svc_common.eventstream's FIELD_SKIPPED) and the error."""
        try:
            return self.fields(), None
        except Exception as exc:  # noqa: BLE001 - a row no reader can represent is set aside, never retried forever
            error = f"{type(exc).__name__}: {exc}"[:SKIPPED_REASON_MAX]
            return {stream.FIELD_SKIPPED: error.encode()}, error
