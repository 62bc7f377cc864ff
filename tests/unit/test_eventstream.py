"""Event ids: parsing what clients send, order, and the gap rule."""

from __future__ import annotations

import pytest

from svc_common.eventstream import (
    FIELD_BOOKING,
    FIELD_CUSTOMER,
    FIELD_EVENT,
    FIELD_PROVIDER,
    FIELD_SKIPPED,
    ORIGIN,
    EventId,
    pack_entry,
    unpack_entry,
)


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("0-0", ORIGIN),
        ("1700000000000-1", EventId(1700000000000, 1)),
        (b"5-7", EventId(5, 7)),
        (f"{2**63 - 1}-{2**63 - 1}", EventId(2**63 - 1, 2**63 - 1)),
    ],
)
def test_event_ids_that_parse(text: str | bytes, parsed: EventId) -> None:
    assert EventId.parse(text) == parsed


@pytest.mark.parametrize(
    "text", ["", "1", "1-", "-1", "1-0", "a-1", "1-1-1", " 1-1", "1-1 ", f"{2**63}-1", f"1-{2**63}", "1" * 20 + "-1"]
)
def test_strings_that_are_not_event_ids(text: str) -> None:
    assert EventId.parse(text) is None


def test_ids_order_by_time_then_sequence_and_print_as_parsed() -> None:
    assert EventId(1, 5) < EventId(2, 1) < EventId(2, 2)
    assert str(EventId(17, 3)) == "17-3"
    assert EventId.parse(str(EventId(17, 3))) == EventId(17, 3)


def test_an_event_follows_only_the_one_right_before_it() -> None:
    assert EventId(10, 2).follows(EventId(10, 1))
    assert EventId(11, 2).follows(EventId(10, 1))
    assert EventId(5, 1).follows(ORIGIN)  # the first event of a stream
    assert not EventId(10, 3).follows(EventId(10, 1))  # seq 2 missing
    assert not EventId(10, 1).follows(EventId(10, 1))
    assert not EventId(9, 2).follows(EventId(10, 1))  # time went back: not ours


def test_bytes_that_are_not_ascii_are_not_event_ids() -> None:
    assert EventId.parse(b"\xff1-1") is None
    assert EventId.parse("\u0661-\u0661") is None  # ARABIC-INDIC DIGIT ONE: a digit, but not ours


@pytest.mark.parametrize(
    "fields",
    [
        {FIELD_EVENT: b"\x00ev:1\x00", FIELD_CUSTOMER: b"c:1", FIELD_PROVIDER: b"", FIELD_BOOKING: b"b-1"},
        {FIELD_EVENT: b"x", FIELD_CUSTOMER: b"12:34", FIELD_PROVIDER: b"\x00", FIELD_BOOKING: b""},
    ],
)
def test_a_packed_entry_unpacks_to_the_same_id_and_fields_whatever_bytes_they_hold(fields: dict[bytes, bytes]) -> None:
    assert unpack_entry(pack_entry(b"17-3", fields)) == (b"17-3", fields)


def test_a_packed_entry_without_an_event_unpacks_as_one_set_aside() -> None:
    entry_id, fields = unpack_entry(pack_entry(b"17-3", {FIELD_SKIPPED: b"bad row"}))
    assert entry_id == b"17-3" and FIELD_EVENT not in fields and FIELD_SKIPPED in fields


@pytest.mark.parametrize("member", [b"", b"x", b"4:17-3", b"99:17-3", b"4:17-31:a1:b", b"-1:x"])
def test_what_is_not_a_packed_entry_is_refused(member: bytes) -> None:
    with pytest.raises(ValueError):
        unpack_entry(member)
