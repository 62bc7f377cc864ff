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


def _violations(check: Checker) -> list[tuple[str, str]]:
    return [(v.field, v.description) for v in check.violations]


def test_each_violation_names_its_field_and_says_what_is_wrong() -> None:
    check = Checker()
    assert check.identifier("a", "") is None
    check.identifier("b", "x" * (MAX_ID_CHARS + 1))
    check.identifier("c", "\x7f")
    check.identifier("d", "ok ")
    check.booking_id("e", "")
    check.booking_id("f", "1" * (MAX_ID_CHARS + 1))
    check.booking_id("g", "nope")
    check.text("h", "x" * 11, 10)
    check.text("i", "a\x00b", 10)
    check.timestamp("j", False, Timestamp())
    check.timestamp("k", True, Timestamp(seconds=0, nanos=1_000_000_000))
    check.etag("l", "abc")
    assert _violations(check) == [
        ("a", "required"),
        ("b", f"at most {MAX_ID_CHARS} characters"),
        ("c", "must not contain control characters or surrounding spaces"),
        ("d", "must not contain control characters or surrounding spaces"),
        ("e", "required"),
        ("f", f"at most {MAX_ID_CHARS} characters"),
        ("g", "must be a booking id (a UUID)"),
        ("h", "at most 10 characters"),
        ("i", "must not contain NUL characters"),
        ("j", "required"),
        ("k", "not a valid timestamp"),
        ("l", "not an etag returned by this service"),
    ]
    with pytest.raises(InvalidArgument) as raised:
        check.done()
    assert raised.value.reason == "INVALID_ARGUMENT"
    assert raised.value.message.startswith("a: required; b: at most")


def test_values_that_pass_come_back_as_domain_values() -> None:
    check = Checker()
    booking = "5f0c6f1e-2b7a-4d8e-9c1a-0b2c3d4e5f60"
    assert str(check.booking_id("id", booking)) == booking
    assert check.booking_id("id", "").int == 0
    check.violations.clear()
    assert check.text("t", "x" * 10, 10) == "x" * 10
    assert check.text("t", "line\nbreak\ttab", 50) == "line\nbreak\ttab"
    assert check.identifier("i", "x" * MAX_ID_CHARS) == "x" * MAX_ID_CHARS
    assert check.etag("e", '"' + "9" * 18 + '"') == int("9" * 18)
    assert not check.violations
    check.done()  # nothing to raise


@pytest.mark.parametrize(
    ("seconds", "nanos", "valid"),
    [
        (-62135596800, 0, True),  # 0001-01-01T00:00:00Z
        (-62135596801, 0, False),
        (253402300799, 999_999_999, True),  # 9999-12-31T23:59:59.999999999Z
        (253402300800, 0, False),
        (0, -1, False),
        (0, 1_000_000_000, False),
    ],
)
def test_timestamps_cover_exactly_the_protobuf_range(seconds: int, nanos: int, valid: bool) -> None:
    check = Checker()
    when = check.timestamp("t", True, Timestamp(seconds=seconds, nanos=nanos))
    assert (not check.violations) is valid
    if valid:
        assert when == Timestamp(seconds=seconds, nanos=nanos).ToDatetime(tzinfo=UTC)


@pytest.mark.parametrize("value", ['"1.5"', '"-1"', '"١٢"', "W/", '""', "X7X"])
def test_etags_that_are_not_ours(value: str) -> None:
    check = Checker()
    assert check.etag("etag", value) is None
    assert _violations(check) == [("etag", "not an etag returned by this service")]


def test_inner_spaces_are_fine_and_the_length_limits_are_exact() -> None:
    check = Checker()
    assert check.identifier("i", "Dr Who") == "Dr Who"
    check.booking_id("b", "1" * MAX_ID_CHARS)  # at the limit: judged as an id, not as too long
    assert _violations(check) == [("b", "must be a booking id (a UUID)")]


def test_whole_microseconds_pass_and_the_refusal_says_why() -> None:
    check = Checker()
    check.time_within("t", True, Timestamp(seconds=2_000_000_000, nanos=1000), EARLIEST_TIME, LATEST_TIME)
    assert not check.violations
    check.time_within("t", True, Timestamp(seconds=2_000_000_000, nanos=1001), EARLIEST_TIME, LATEST_TIME)
    assert _violations(check) == [("t", "must have whole microseconds (nanos a multiple of 1000)")]
    check.violations.clear()
    check.time_within("t", True, Timestamp(seconds=0), datetime(1971, 1, 1, tzinfo=UTC), LATEST_TIME)
    assert _violations(check) == [
        ("t", "must be from 1971-01-01T00:00:00+00:00 up to (not including) 9999-01-01T00:00:00+00:00")
    ]
