"""The encoding of an outbox row into its stream entry (svc_common.outbox), which the relay and notify's fallback
share: times set from their fields directly (not by protobuf's Timestamp.FromDatetime) must mean what they did."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from booking_api.booking.v1 import booking_pb2, events_pb2
from svc_common import eventstream
from svc_common.eventstream import EventId
from svc_common.outbox import PlacedRow, _stamp

offsets = st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
aware = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=offsets
)  # a day from either end: every offset stays in range
naive = st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59, 999_999))


def _reference(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


@given(aware)
def test_a_stored_time_is_the_timestamp_protobuf_makes_of_it(moment: datetime) -> None:
    for stored in (moment, moment.isoformat()):  # asyncpg's datetime, or to_jsonb's text
        assert Timestamp(**_stamp(stored)) == _reference(moment)


@given(naive)
def test_a_naive_time_is_read_as_utc_as_protobuf_reads_it(moment: datetime) -> None:
    assert Timestamp(**_stamp(moment)) == _reference(moment)


def test_text_no_datetime_spells_and_times_no_timestamp_holds_are_refused() -> None:
    # As Timestamp.FromDatetime refuses them: such a row is set aside, never published as bytes no reader takes.
    for text in ("infinity", "10000-01-01T00:00:00+00:00", "0001-01-01T02:00:00+05:00", "9999-12-31T22:00:00-05:00"):
        try:
            _stamp(text)
        except ValueError:
            continue
        raise AssertionError(f"{text!r} was taken")


def test_every_field_of_a_booking_reaches_its_event() -> None:
    booking = {
        "id": "0b1c2d3e-1111-2222-3333-444455556666",
        "customer_id": "c1",
        "provider_id": "p1",
        "service_id": "cut",
        "start_time": "2045-01-01T09:00:00+01:00",
        "end_time": "2045-01-01T09:30:00.000250+01:00",
        "notes": "window seat",
        "create_time": "2026-12-07T16:18:31.123456+00:00",
        "update_time": "2026-12-07T16:18:32+00:00",
        "deletion_reason": "moved away",
        "version": 3,
        "state": "HELD",
        "expire_time": "2026-12-07T16:23:31+00:00",
        "delete_time": "2026-12-07T16:20:00+00:00",
        "deleted_by_id": "u9",
        "deleted_by_name": "Ann",
        "deleted_by_role": "provider",
    }
    occurred = datetime(2026, 12, 7, 16, 20, tzinfo=UTC)
    record = {
        "seq": 7, "stream_ms": 1_700_000_000_000, "event_type": "DELETED", "booking": json.dumps(booking),
        "booking_id": booking["id"], "actor_id": "u9", "actor_name": "Ann", "actor_role": "provider",
        "occur_time": occurred, "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    }  # fmt: skip
    fields, error = PlacedRow.of(record).entry_fields()
    assert error is None
    event = events_pb2.BookingEvent.FromString(fields[eventstream.FIELD_EVENT])
    assert event.event_id == str(EventId(1_700_000_000_000, 7))
    assert event.type == events_pb2.BOOKING_EVENT_TYPE_DELETED
    assert event.occur_time.ToDatetime(tzinfo=UTC) == occurred
    assert (event.actor.id, event.actor.name, event.actor.role) == ("u9", "Ann", booking_pb2.ROLE_PROVIDER)
    assert event.traceparent == record["traceparent"]
    made = event.booking
    assert (made.id, made.customer_id, made.provider_id, made.service_id, made.notes, made.deletion_reason) == (
        booking["id"], "c1", "p1", "cut", "window seat", "moved away",
    )  # fmt: skip
    assert (made.etag, made.state) == ('"3"', booking_pb2.BOOKING_STATE_HELD)
    for name in ("start_time", "end_time", "create_time", "update_time", "expire_time", "delete_time"):
        assert getattr(made, name).ToDatetime(tzinfo=UTC) == datetime.fromisoformat(str(booking[name])), name
    assert (made.deleted_by.id, made.deleted_by.name, made.deleted_by.role) == ("u9", "Ann", booking_pb2.ROLE_PROVIDER)
    assert fields[eventstream.FIELD_CUSTOMER] == b"c1" and fields[eventstream.FIELD_PROVIDER] == b"p1"
