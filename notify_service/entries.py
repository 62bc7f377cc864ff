"""Stream entries into hub events: decoding one entry, and completing a read with the erased entries it lacks.

A hard delete replaces the booking's earlier entries with redacted copies, kept in the stream's erased set
(svc_common.eventstream): a read whose seqs have holes asks that set for them, one more call only then.
"""

from __future__ import annotations

import logging
from typing import Any

import redis.asyncio as redis
from google.protobuf.message import DecodeError

from booking_api.booking.v1 import events_pb2
from booking_api.notify.v1 import notify_pb2
from notify_service.hub import Event
from svc_common import eventstream as stream
from svc_common.eventstream import EventId

log = logging.getLogger(__name__)

Entries = list[tuple[bytes, dict[bytes, bytes]]]  # as XRANGE and XREAD return them: (id, fields)


def decode(entry_id: bytes, fields: dict[bytes, bytes]) -> Event | None:
    """The event of one stream entry: a place holder (no payload) for an event the relay set aside, None for an
    entry that is not one of ours, which is skipped (had it taken the place of one of ours, subscribers see the
    gap in the seqs and are told)."""
    event_id = EventId.parse(entry_id)
    if event_id is None:
        log.error("stream entry %r is not a change event; skipped", entry_id)
        return None
    raw = fields.get(stream.FIELD_EVENT)
    if raw is None:
        if stream.FIELD_SCHEDULE in fields:
            return _schedule_event(event_id, fields)
        if stream.FIELD_SEAM in fields:
            return Event(id=event_id, customer_id="", provider_id="", booking_id="", payload=None, seam=True)
        if stream.FIELD_SKIPPED in fields:
            log.warning("change event %s was set aside by the relay; passed over", event_id)
            return Event(id=event_id, customer_id="", provider_id="", booking_id="", payload=None)
        log.error("stream entry %r is not a change event; skipped", entry_id)
        return None
    try:
        event = events_pb2.BookingEvent.FromString(raw)
    except DecodeError:
        log.error("stream entry %r does not hold a BookingEvent; skipped", entry_id)
        return None
    # A response of this one event; responses of several are the concatenation of theirs (protobuf appends
    # repeated fields), so each event is serialized once however many subscribers and batches carry it.
    response = notify_pb2.SubscribeResponse(events=[event])
    return Event(
        id=event_id,
        customer_id=fields.get(stream.FIELD_CUSTOMER, b"").decode(),
        provider_id=fields.get(stream.FIELD_PROVIDER, b"").decode(),
        booking_id=fields.get(stream.FIELD_BOOKING, b"").decode(),
        payload=response.SerializeToString(),
        erases=event.type == events_pb2.BOOKING_EVENT_TYPE_HARD_DELETED,
    )


def _schedule_event(event_id: EventId, fields: dict[bytes, bytes]) -> Event | None:
    try:
        event = events_pb2.ScheduleEvent.FromString(fields[stream.FIELD_SCHEDULE])
    except DecodeError:
        log.error("stream entry %s does not hold a ScheduleEvent; skipped", event_id)
        return None
    response = notify_pb2.SubscribeResponse(schedule_events=[event])
    provider = fields.get(stream.FIELD_PROVIDER, b"").decode()
    return Event(event_id, "", provider, "", response.SerializeToString(), public=True)


def events_of(entries: Entries) -> list[Event]:
    return [event for entry_id, fields in entries if (event := decode(entry_id, fields)) is not None]


def missing(previous: EventId | None, events: list[Event]) -> bool:
    """Whether seqs are missing between `previous` (None: anywhere before the first) and the events, or among them."""
    expected = previous.seq + 1 if previous is not None else None
    for event in events:
        if expected is not None and event.id.seq > expected and not event.seam:
            return True
        expected = event.id.seq + 1
    return False


def _unpacked(member: bytes) -> Event | None:
    try:
        entry_id, fields = stream.unpack_entry(member)
    except ValueError:
        log.error("erased copy %r is not a stream entry; skipped", member[:40])
        return None
    return decode(entry_id, fields)


class ErasedCopies:
    """The erased set of one stream: puts back the entries a read lacks because a hard delete replaced them."""

    def __init__(self, client: redis.Redis, key: str) -> None:
        self._redis = client
        self._erased_key = stream.erased_key(key)

    async def complete(self, previous: EventId | None, entries: Entries) -> list[Event]:
        """The events of `entries`, read after `previous`, with the erased ones that are missing among them put
        back from the erased set (one more call, only when seqs are missing)."""
        events = events_of(entries)
        if not events or not missing(previous, events):
            return events
        low = previous.seq if previous is not None else events[0].id.seq
        members: Any = await self._redis.zrangebyscore(self._erased_key, f"({low}", f"({events[-1].id.seq}")
        have = {event.id.seq for event in events}
        copies = [event for member in members if (event := _unpacked(member)) is not None and event.id.seq not in have]
        return sorted([*events, *copies], key=lambda event: event.id) if copies else events
