"""Event ids: parsing what clients send, order, and the gap rule."""

from __future__ import annotations

import pytest

from svc_common.eventstream import ORIGIN, EventId


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
