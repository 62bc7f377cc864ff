"""Request checks: each problem is one field violation, all reported at once."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from booking_service.domain import EARLIEST_TIME, LATEST_TIME
from svc_common.errors import InvalidArgument
from svc_common.validation import MAX_ID_CHARS, Checker


def stamp(when: datetime, nanos: int = 0) -> Timestamp:
    return Timestamp(seconds=int(when.timestamp()), nanos=nanos)


def test_all_problems_are_reported_at_once() -> None:
    check = Checker()
    check.identifier("a", "")
    check.identifier("b", "x" * (MAX_ID_CHARS + 1))
    check.booking_id("c", "not-a-uuid")
    check.etag("d", '"12x"')
    with pytest.raises(InvalidArgument) as raised:
        check.done()
    assert [v.field for v in raised.value.violations] == ["a", "b", "c", "d"]


@pytest.mark.parametrize("value", [" padded", "tab\there", "nul\x00", "x" * (MAX_ID_CHARS + 1)])
def test_identifiers_refuse_control_characters_padding_and_excess(value: str) -> None:
    check = Checker()
    check.identifier("id", value)
    assert check.violations and check.violations[0].field == "id"


def test_identifiers_may_be_optional_and_at_the_limit() -> None:
    check = Checker()
    assert check.identifier("id", "", required=False) is None
    assert check.identifier("id", "é" * MAX_ID_CHARS) == "é" * MAX_ID_CHARS
    assert not check.violations


def test_etags_are_quoted_versions_or_empty() -> None:
    check = Checker()
    assert check.etag("etag", "") is None
    assert check.etag("etag", '"7"') == 7
    assert check.etag("etag", 'W/"8"') == 8
    assert not check.violations
    assert check.etag("etag", '"' + "9" * 19 + '"') is None
    assert len(check.violations) == 1


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (stamp(EARLIEST_TIME), None),
        (stamp(LATEST_TIME, 0), "up to"),
        (Timestamp(seconds=int(LATEST_TIME.timestamp()) - 1, nanos=999_999_000), None),
        (Timestamp(seconds=int(EARLIEST_TIME.timestamp()) - 1), "from 1970"),
        (stamp(datetime(2030, 1, 1, tzinfo=UTC), 1), "whole microseconds"),
        (Timestamp(seconds=-(2**40)), "not a valid timestamp"),
        (Timestamp(seconds=0, nanos=-1), "not a valid timestamp"),
    ],
)
def test_booking_times_stay_in_range_with_whole_microseconds(value: Timestamp, words: str | None) -> None:
    check = Checker()
    check.time_within("t", True, value, EARLIEST_TIME, LATEST_TIME)
    if words is None:
        assert not check.violations
    else:
        assert [v.field for v in check.violations] == ["t"] and words in check.violations[0].description


def test_a_missing_time_is_required() -> None:
    check = Checker()
    check.time_within("t", False, Timestamp(), EARLIEST_TIME, LATEST_TIME)
    assert [(v.field, v.description) for v in check.violations] == [("t", "required")]
