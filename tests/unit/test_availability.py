"""booking_service.availability: a schedule in the provider's time zone turned into instants, across daylight
saving changes and on both sides of UTC, and the free time and slot starts a booking with buffers fits in."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from booking_service.availability import (
    DateOverride,
    LocalRange,
    Rule,
    Schedule,
    WorkingHours,
    free_spans,
    micros,
    outside,
    slot_starts,
    working_spans,
)

H = 3600


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def every_day(zone: str, start_h: float, end_h: float, **more: object) -> Schedule:
    hours = LocalRange(int(start_h * H), int(end_h * H))
    return Schedule("p1", zone, tuple(WorkingHours(day, hours) for day in range(1, 8)), **more)  # type: ignore[arg-type]


def total(spans: list[tuple[datetime, datetime]]) -> timedelta:
    return sum((e - s for s, e in spans), timedelta(0))


@pytest.mark.parametrize(
    ("zone", "day"),
    [
        ("Europe/Berlin", date(2026, 3, 29)),  # springs forward
        ("Europe/Berlin", date(2026, 10, 25)),  # falls back
        ("America/New_York", date(2026, 3, 8)),
        ("America/New_York", date(2026, 11, 1)),
    ],
)
def test_nine_to_five_is_eight_hours_on_the_days_the_clocks_change(zone: str, day: date) -> None:
    schedule = every_day(zone, 9, 17)
    start = datetime(day.year, day.month, day.day, tzinfo=schedule.zone).astimezone(UTC)
    spans = working_spans(schedule, start, start + timedelta(hours=24))
    assert len(spans) == 1 and total(spans) == timedelta(hours=8)
    local = spans[0][0].astimezone(schedule.zone)
    assert (local.date(), local.hour, local.minute) == (day, 9, 0)


def test_a_range_into_the_spring_forward_gap_is_read_with_the_offset_before_it() -> None:
    """01:30-02:30 on the day Berlin skips 02:00-03:00: 02:30 does not exist and means 03:30 CEST."""
    schedule = every_day("Europe/Berlin", 1.5, 2.5)
    spans = working_spans(schedule, utc(2026, 3, 28, 22), utc(2026, 3, 29, 22))
    assert spans == [(utc(2026, 3, 29, 0, 30), utc(2026, 3, 29, 1, 30))]  # 01:30 CET to 03:30 CEST: one hour


def test_overrides_fall_on_the_providers_local_date_far_east_and_far_west_of_utc() -> None:
    weekdays = tuple(WorkingHours(day, LocalRange(9 * H, 17 * H)) for day in range(1, 8))
    auckland = Schedule("p1", "Pacific/Auckland", weekdays, (DateOverride(date(2026, 12, 25), ()),))
    # Auckland is UTC+13 in December: the 24th local is 23 Dec 20:00Z-24 Dec 04:00Z, the 25th (24 Dec 20:00Z-
    # 25 Dec 04:00Z) is closed, the 26th starts 25 Dec 20:00Z.
    spans = working_spans(auckland, utc(2026, 12, 23), utc(2026, 12, 26))
    assert spans == [
        (utc(2026, 12, 23), utc(2026, 12, 23, 4)),  # the 23rd local, from where the window starts
        (utc(2026, 12, 23, 20), utc(2026, 12, 24, 4)),
        (utc(2026, 12, 25, 20), utc(2026, 12, 26)),
    ]
    honolulu = Schedule(
        "p1", "Pacific/Honolulu", (), (DateOverride(date(2026, 12, 24), (LocalRange(18 * H, 24 * 3600),)),)
    )
    # Honolulu is UTC-10: the evening of the 24th local is the morning of the 25th in UTC.
    assert working_spans(honolulu, utc(2026, 12, 20), utc(2026, 12, 30)) == [
        (utc(2026, 12, 25, 4), utc(2026, 12, 25, 10))
    ]


def test_an_override_opens_a_weekday_that_is_otherwise_closed_and_replaces_a_days_hours() -> None:
    weekdays = tuple(WorkingHours(day, LocalRange(9 * H, 17 * H)) for day in range(1, 6))  # Monday to Friday
    overrides = (
        DateOverride(date(2026, 12, 13), (LocalRange(10 * H, 12 * H),)),  # a Sunday
        DateOverride(date(2026, 12, 14), (LocalRange(8 * H, 9 * H), LocalRange(13 * H, 14 * H))),  # a Monday
    )
    schedule = Schedule("p1", "UTC", weekdays, overrides)
    assert working_spans(schedule, utc(2026, 12, 12), utc(2026, 12, 15)) == [
        (utc(2026, 12, 13, 10), utc(2026, 12, 13, 12)),
        (utc(2026, 12, 14, 8), utc(2026, 12, 14, 9)),
        (utc(2026, 12, 14, 13), utc(2026, 12, 14, 14)),
    ]


def test_free_time_leaves_room_for_both_bookings_buffers() -> None:
    schedule = every_day("UTC", 9, 17, buffer_before=timedelta(minutes=15), buffer_after=timedelta(minutes=30))
    now = utc(2026, 12, 1)
    # One booking 12:00-13:00 made with the same buffers: taken 11:45-13:30.
    taken = [(utc(2026, 12, 7, 11, 45), utc(2026, 12, 7, 13, 30))]
    free, _ = free_spans(schedule, utc(2026, 12, 7), utc(2026, 12, 8), taken, now, timedelta(minutes=30))
    # A new booking needs its own 30 min after it before 11:45, and its own 15 min before it after 13:30.
    assert free == [(utc(2026, 12, 7, 9), utc(2026, 12, 7, 11, 15)), (utc(2026, 12, 7, 13, 45), utc(2026, 12, 7, 17))]


def test_notice_and_horizon_bound_free_time_from_now() -> None:
    schedule = every_day("UTC", 0, 24, minimum_notice=timedelta(hours=2), booking_horizon=timedelta(days=1))
    now = utc(2026, 12, 7, 10, 17)
    free, _ = free_spans(schedule, utc(2026, 12, 7), utc(2026, 12, 10), [], now, timedelta(minutes=30))
    assert free == [(utc(2026, 12, 7, 12, 17), utc(2026, 12, 8, 10, 17))]
    assert outside(schedule, utc(2026, 12, 7, 12), utc(2026, 12, 7, 13), now) is Rule.NOTICE
    assert outside(schedule, utc(2026, 12, 8, 10), utc(2026, 12, 8, 11), now) is Rule.HORIZON
    assert outside(schedule, utc(2026, 12, 7, 13), utc(2026, 12, 7, 14), now) is None


def test_a_time_outside_the_hours_names_the_hours_or_the_override_that_closed_it() -> None:
    schedule = Schedule(
        "p1",
        "Europe/Berlin",
        tuple(WorkingHours(day, LocalRange(9 * H, 17 * H)) for day in range(1, 8)),
        (DateOverride(date(2026, 12, 24), ()),),
    )
    now = utc(2026, 12, 1)
    assert outside(schedule, utc(2026, 12, 22, 8), utc(2026, 12, 22, 9), now) is None  # 09:00-10:00 CET
    assert outside(schedule, utc(2026, 12, 22, 15, 30), utc(2026, 12, 22, 16, 30), now) is Rule.HOURS  # to 17:30
    assert outside(schedule, utc(2026, 12, 24, 9), utc(2026, 12, 24, 10), now) is Rule.OVERRIDE
    assert outside(None, utc(2026, 12, 24, 3), utc(2026, 12, 24, 4), now) is None  # no schedule: always open


def test_slot_starts_step_from_each_working_ranges_start_and_fit_whole() -> None:
    schedule = Schedule("p1", "UTC", (WorkingHours(1, LocalRange(9 * H, 12 * H)),))  # Mondays 09:00-12:00
    taken = [(utc(2026, 12, 7, 10, 10), utc(2026, 12, 7, 10, 40))]
    free, working = free_spans(
        schedule, utc(2026, 12, 7), utc(2026, 12, 8), taken, utc(2026, 12, 1), timedelta(minutes=45)
    )
    starts = slot_starts(free, working, timedelta(minutes=45), timedelta(minutes=30), 100)
    assert starts == [micros(utc(2026, 12, 7, 9)), micros(utc(2026, 12, 7, 11))]  # 09:30 would end 10:15, 11:30 12:15
    assert len(slot_starts(free, working, timedelta(microseconds=1), timedelta(microseconds=1), 7)) == 7  # bounded
