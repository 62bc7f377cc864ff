"""Seams, without servers: where the stream's positions jump on purpose after a PostgreSQL failover (the relay
decides when one is needed; readers take one as the continuation of whatever came before it, and nothing else)."""

from __future__ import annotations

import json

import pytest

from booking_api.booking.v1 import events_pb2
from booking_api.booking.v1.booking_pb2 import Booking
from booking_api.notify.v1 import notify_pb2
from booking_service.outbox import seam_reason
from notify_service.entries import decode
from notify_service.history import within_range
from notify_service.hub import Event, EventFilter, Hub, Subscriber
from svc_common import eventstream
from svc_common.errors import OutOfRange
from svc_common.eventstream import SEAM_GAP, EventId
from svc_common.outbox import PlacedRow
from svc_common.principal import Principal, Role
from svc_common.scope import Scope
from tests.unit.test_hub import drain, event

ADMIN = Scope.of(Principal("root", "root", Role.ADMIN))


def seam(seq: int, ms: int | None = None) -> Event:
    return Event(EventId(1000 + seq if ms is None else ms, seq), "", "", "", None, seam=True)


@pytest.mark.parametrize(
    ("stream_top", "recorded", "needed"),
    [
        (None, None, False),  # a new database, Redis unknown: nothing to square
        (None, 1, False),  # the timeline events were placed on
        (None, 2, True),  # another timeline: a promotion since events were last placed
        (EventId(1005, 5), 1, False),  # the stream holds what the outbox placed, not more
        (EventId(1003, 3), 1, False),  # the stream behind the outbox: Redis lost entries (republished, no seam)
        (EventId(1006, 6), 1, True),  # the stream ahead: the outbox lacks what was published
        (EventId(2000, 5), 1, True),  # its last entry placed later than the outbox's newest: not the outbox's
        (EventId(1005, 6), 1, True),
    ],
)
def test_a_seam_is_needed_exactly_when_the_outbox_may_lack_positions_handed_out(
    stream_top: EventId | None, recorded: int | None, needed: bool
) -> None:
    assert (seam_reason(EventId(1005, 5), stream_top, recorded, timeline=1) is not None) is needed


def test_a_live_subscriber_goes_on_across_a_seam_and_is_never_sent_it() -> None:
    hub = Hub()
    subscriber = Subscriber(EventFilter(ADMIN), None, 10)
    hub.add(subscriber)
    jump = 2 + SEAM_GAP
    hub.dispatch([event(1), event(2), seam(jump), event(jump + 1)])
    assert subscriber.failure is None
    assert subscriber.last == EventId(1000 + jump + 1, jump + 1)
    assert list(subscriber._queue) == [b"e1", b"e2", f"e{jump + 1}".encode()]


def test_a_seam_placed_behind_in_time_still_continues_and_is_not_taken_for_one_seen() -> None:
    """A relay that could not read the stream's end places its seam by its own newest position and clock, which
    may be behind what a reader dispatched from the lost outbox: the seam and what follows it still come next."""
    subscriber = Subscriber(EventFilter(ADMIN), EventId(5000, 40), 10)
    subscriber.offer([seam(20 + SEAM_GAP, ms=4000), Event(EventId(4001, 21 + SEAM_GAP), "c", "p", "b", b"new")])
    assert subscriber.failure is None and list(subscriber._queue) == [b"new"]
    subscriber.offer([seam(20 + SEAM_GAP, ms=4000)])  # read again while catching up: already passed
    assert subscriber.failure is None and subscriber.last == EventId(4001, 21 + SEAM_GAP)


async def test_only_a_seam_may_jump_any_other_gap_still_ends_the_subscriber() -> None:
    subscriber = Subscriber(EventFilter(ADMIN), EventId(1002, 2), 10)
    subscriber.offer([event(2 + SEAM_GAP)])
    with pytest.raises(OutOfRange):
        await drain(subscriber)


def test_the_window_restarts_at_a_seam_and_answers_from_it() -> None:
    hub = Hub()
    jump = 3 + SEAM_GAP
    hub.dispatch([event(1), event(2), event(3), seam(jump), event(jump + 1)])
    assert hub.recent_after(EventId(1002, 2), 10) is None  # before the seam: read from the stream
    assert [e.id.seq for e in hub.recent_after(EventId(1000 + jump, jump), 10) or []] == [jump + 1]
    assert hub.oldest == EventId(1000 + jump, jump)


def test_a_history_read_ends_at_a_seam_and_the_next_one_starts_with_it() -> None:
    jump = 5 + SEAM_GAP
    read = [event(4), event(5), seam(jump), event(jump + 1)]
    assert [e.id.seq for e in within_range(EventId(1003, 3), 997, read)] == [4, 5]
    assert [e.id.seq for e in within_range(EventId(1005, 5), 995, read[2:])] == [jump]
    assert [e.id.seq for e in within_range(EventId(1003, 3), 2, [event(4), event(5), event(6)])] == [4, 5]


def test_a_seam_row_is_the_same_entry_on_both_paths_and_decodes_as_a_seam() -> None:
    row = PlacedRow.of(
        {
            "seq": 7 + SEAM_GAP,
            "stream_ms": 1234,
            "event_type": "SEAM",
            "booking": json.dumps({"after": "1200-7", "reason": "PostgreSQL is on timeline 2, not 1"}),
        }
    )
    fields = row.fields()
    assert fields == {eventstream.FIELD_SEAM: b"after 1200-7: PostgreSQL is on timeline 2, not 1"}
    decoded = decode(str(row.event_id).encode(), fields)
    assert decoded is not None and decoded.seam and decoded.payload is None
    assert decoded.id == EventId(1234, 7 + SEAM_GAP)


def test_a_change_delivered_before_a_seam_and_placed_again_after_it_is_delivered_once() -> None:
    """The old primary placed (and notify delivered) a change whose commit, but not whose placing, reached the
    standby; the new primary places it again after its seam: it keeps that position but is not delivered."""
    kinds = {"CREATED": events_pb2.BOOKING_EVENT_TYPE_CREATED, "UPDATED": events_pb2.BOOKING_EVENT_TYPE_UPDATED}
    sent: dict[int, bytes] = {}

    def change(seq: int, kind: str, booking: str, version: int) -> Event:
        carried = events_pb2.BookingEvent(
            event_id=f"{1000 + seq}-{seq}", type=kinds[kind], booking=Booking(id=booking, etag=f'"{version}"')
        )
        sent[seq] = notify_pb2.SubscribeResponse(events=[carried]).SerializeToString()
        return Event(EventId(1000 + seq, seq), "c", "p", booking, sent[seq])

    hub = Hub()
    live = Subscriber(EventFilter(ADMIN), None, 10)
    hub.add(live)
    jump = 3 + SEAM_GAP
    hub.dispatch([change(1, "CREATED", "a", 1), change(2, "CREATED", "b", 1), change(3, "UPDATED", "a", 2)])
    hub.dispatch([seam(jump), change(jump + 1, "CREATED", "b", 1), change(jump + 2, "UPDATED", "a", 2)])
    hub.dispatch([change(jump + 3, "CREATED", "c", 1)])
    assert live.failure is None
    assert list(live._queue) == [sent[1], sent[2], sent[3], sent[jump + 3]]  # each change once
    assert live.last == EventId(1000 + jump + 3, jump + 3)
    # A reader that came to the seam through the stream, which held only up to 2 (3 was read from the outbox of
    # the primary that failed): it had "b 1" but never "a 2", so it gets that one after the seam.
    after_seam = hub.recent_after(EventId(1000 + jump, jump), 10) or []
    assert [e.repeats for e in after_seam] == [EventId(1002, 2), EventId(1003, 3), None]
    through_stream = Subscriber(EventFilter(ADMIN), EventId(1002, 2), 10)
    through_stream.offer([seam(jump), *after_seam])
    assert list(through_stream._queue) == [sent[jump + 2], sent[jump + 3]]


def test_repeats_are_looked_for_only_in_a_windows_worth_of_events_after_the_seam() -> None:
    """Each payload after a seam is parsed to find repeats; past a window's worth of events (where the new primary
    has placed every change it got the commit of) the hot path is as before, and nothing is marked."""
    payload = notify_pb2.SubscribeResponse(
        events=[
            events_pb2.BookingEvent(type=events_pb2.BOOKING_EVENT_TYPE_CREATED, booking=Booking(id="a", etag='"1"'))
        ]
    ).SerializeToString()
    hub = Hub(window=3)
    hub.dispatch([Event(EventId(1001, 1), "c", "p", "a", payload), *[event(seq) for seq in (2, 3)]])
    jump = 3 + SEAM_GAP
    hub.dispatch([seam(jump), *[event(jump + n) for n in (1, 2, 3)]])
    late = Event(EventId(1000 + jump + 4, jump + 4), "c", "p", "a", payload)
    hub.dispatch([late])
    assert hub.recent_after(EventId(1000 + jump + 3, jump + 3), 1) == [late]  # not marked as a repeat
