"""notify_service.history.History with a stand-in for Redis: full ranges are kept for other resuming subscribers,
and a hard delete dispatched since drops them (they may hold the erased notes)."""

from __future__ import annotations

from typing import Any

from booking_api.booking.v1 import booking_pb2, events_pb2
from booking_api.notify.v1 import notify_pb2
from notify_service.entries import decode
from notify_service.history import History
from notify_service.hub import Event, Hub
from svc_common import eventstream as stream
from svc_common.eventstream import EventId
from tests.support.notify_path import event_path


def entry(
    seq: int, notes: str, kind: events_pb2.BookingEventType.ValueType = events_pb2.BOOKING_EVENT_TYPE_CREATED
) -> tuple[bytes, dict[bytes, bytes]]:
    event = events_pb2.BookingEvent(type=kind, booking=booking_pb2.Booking(id="b1", notes=notes))
    return f"{1000 + seq}-{seq}".encode(), {stream.FIELD_EVENT: event.SerializeToString(), stream.FIELD_BOOKING: b"b1"}


class StreamStandIn:
    """XRANGE over a list of entries the test may replace (as the relay's erasure does)."""

    def __init__(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        self.entries = entries
        self.reads = 0

    async def xrange(self, _key: str, min: str = "-", count: int | None = None, **_: Any) -> list[Any]:
        self.reads += 1
        after = EventId.parse(min.lstrip("(")) or EventId(0, 0)
        found = [e for e in self.entries if (EventId.parse(e[0]) or after) > after]
        return found[:count]


def notes(events: list[Event]) -> list[str]:
    return [notify_pb2.SubscribeResponse.FromString(e.payload or b"").events[0].booking.notes for e in events]


async def test_a_hard_delete_dispatched_after_a_full_range_was_kept_drops_it() -> None:
    redis = StreamStandIn([entry(seq, "secret") for seq in range(1, 5)])
    hub = Hub(window=0)
    history: History = event_path(redis, "k", hub).history  # type: ignore[arg-type]
    history.batch = 4
    first = await history.after(EventId(0, 0))
    assert notes(first) == ["secret"] * 4 and redis.reads == 1
    assert notes(await history.after(EventId(0, 0))) == ["secret"] * 4 and redis.reads == 1  # kept: full range

    # The relay erases the notes in the stream, then notify dispatches the HARD_DELETED event.
    redis.entries = [entry(seq, "") for seq in range(1, 5)]
    erasing = decode(*entry(5, "", events_pb2.BOOKING_EVENT_TYPE_HARD_DELETED))
    assert erasing is not None and erasing.erases
    hub.dispatch([erasing])
    assert notes(await history.after(EventId(0, 0))) == [""] * 4 and redis.reads == 2
