"""A provider's availability: its schedule (weekly hours and date overrides in its own time zone, buffers, notice
and horizon) turned into instants, and the free intervals and slot starts a booking fits in.

Local times become instants with the zone's rules for that date (zoneinfo), so 09:00-17:00 is eight hours on the
days the clocks change too. A local time that does not exist (in the spring-forward gap) is read with the offset
before the gap, which moves it forward by the gap (RFC 5545's rule, and PostgreSQL's): a range 01:30-02:30 on
the day Europe/Berlin springs forward at 02:00 runs from 01:30 CET to 03:30 CEST, one hour. A local time that
occurs twice (falling back) is its first occurrence. Ranges that meet or overlap once placed are merged.

A provider without a schedule is available at all times. Pure: no I/O, no clock (`now` is passed in).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from itertools import islice
from zoneinfo import ZoneInfo

DAY_SECONDS = 86_400
Span = tuple[datetime, datetime]  # [start, end), aware UTC instants


@dataclass(frozen=True)
class LocalRange:
    """[start, end) in seconds since local midnight; end may be 86,400 (24:00)."""

    start: int
    end: int


@dataclass(frozen=True)
class WorkingHours:
    day: int  # ISO weekday: 1 Monday .. 7 Sunday
    hours: LocalRange


@dataclass(frozen=True)
class DateOverride:
    date: date
    hours: tuple[LocalRange, ...]  # none: closed that date


@dataclass(frozen=True)
class Schedule:
    provider_id: str
    time_zone: str
    weekly_hours: tuple[WorkingHours, ...] = ()
    date_overrides: tuple[DateOverride, ...] = ()
    buffer_before: timedelta = timedelta(0)
    buffer_after: timedelta = timedelta(0)
    minimum_notice: timedelta = timedelta(0)
    booking_horizon: timedelta = timedelta(0)  # 0: no limit
    version: int = 0
    update_time: datetime | None = None
    zone: ZoneInfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "zone", ZoneInfo(self.time_zone))

    def hours_on(self, day: date) -> tuple[LocalRange, ...]:
        """The local ranges of `day`: its override's, else its weekday's."""
        for override in self.date_overrides:
            if override.date == day:
                return override.hours
        return tuple(w.hours for w in self.weekly_hours if w.day == day.isoweekday())


class Rule(enum.Enum):
    """Which rule a time outside availability breaks (the metadata of OUTSIDE_AVAILABILITY)."""

    HOURS = "hours"
    OVERRIDE = "override"
    NOTICE = "notice"
    HORIZON = "horizon"


def merge(spans: Iterable[Span]) -> list[Span]:
    """Sorted, with spans that meet or overlap joined."""
    merged: list[Span] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def _instant(zone: ZoneInfo, day: date, seconds: int) -> datetime:
    wall = datetime.combine(day, time()) + timedelta(seconds=seconds)  # wall-clock arithmetic: 24:00 is next day
    return wall.replace(tzinfo=zone, fold=0).astimezone(UTC)


def working_spans(schedule: Schedule, start: datetime, end: datetime) -> list[Span]:
    """The instants in [start, end) inside the schedule's working hours (overrides win), merged."""
    zone = schedule.zone
    first, last = start.astimezone(zone).date() - timedelta(days=1), end.astimezone(zone).date()
    spans: list[Span] = []
    day = first
    while day <= last:
        for hours in schedule.hours_on(day):
            lo, hi = _instant(zone, day, hours.start), _instant(zone, day, hours.end)
            lo, hi = max(lo, start), min(hi, end)
            if lo < hi:
                spans.append((lo, hi))
        day += timedelta(days=1)
    return merge(spans)


def bookable_window(schedule: Schedule | None, now: datetime) -> Span:
    """[now + minimum notice, now + horizon): when a booking may lie at all (no bound without a schedule)."""
    lowest, highest = datetime.min.replace(tzinfo=UTC), datetime.max.replace(tzinfo=UTC)
    if schedule is None:
        return lowest, highest
    horizon = now + schedule.booking_horizon if schedule.booking_horizon > timedelta(0) else highest
    return now + schedule.minimum_notice, horizon


def _subtract(spans: Sequence[Span], blocked: Sequence[Span]) -> list[Span]:
    """`spans` minus `blocked` (both merged)."""
    result: list[Span] = []
    for start, end in spans:
        cursor = start
        for b_start, b_end in blocked:
            if b_end <= cursor or b_start >= end:
                continue
            if b_start > cursor:
                result.append((cursor, b_start))
            cursor = max(cursor, b_end)
            if cursor >= end:
                break
        if cursor < end:
            result.append((cursor, end))
    return result


def free_spans(
    schedule: Schedule | None,
    start: datetime,
    end: datetime,
    taken: Iterable[Span],
    now: datetime,
    duration: timedelta,
) -> tuple[list[Span], list[Span]]:
    """The maximal free intervals in [start, end) where a booking of at least `duration`, with the schedule's
    buffers around it, fits between the `taken` spans (other bookings, each already widened by its own buffers);
    and the working spans they lie in (for slot starts). The buffers may fall outside working hours."""
    low, high = bookable_window(schedule, now)
    window = (max(start, low), min(end, high))
    if window[0] >= window[1]:
        return [], []
    working = working_spans(schedule, *window) if schedule is not None else [window]
    before = schedule.buffer_before if schedule is not None else timedelta(0)
    after = schedule.buffer_after if schedule is not None else timedelta(0)
    # A booking [s, e) fits where [s - before, e + after) meets nothing taken: widen what is taken instead.
    blocked = merge((s - after, e + before) for s, e in taken)
    free = [(s, e) for s, e in _subtract(working, blocked) if e - s >= duration]
    return free, working


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)


def micros(instant: datetime) -> int:
    """Microseconds since 1970 (exact: slot arithmetic runs on these, a month of starts in microseconds)."""
    return (instant - EPOCH) // MICROSECOND


def slot_starts(
    free: Sequence[Span], working: Sequence[Span], duration: timedelta, step: timedelta, limit: int
) -> list[int]:
    """Starts of a booking of `duration`, stepping by `step` from the start of each working span, that fit whole
    in a free interval, in microseconds since 1970, in time order; at most `limit` (the first ones). Each free
    interval lies inside one working span (free time is working time minus what is taken)."""
    length, stride = duration // MICROSECOND, step // MICROSECOND
    starts: list[int] = []
    for w_start, w_end in working:
        origin = micros(w_start)
        for start, end in free:
            if start >= w_end or end <= w_start:
                continue
            first = origin + max(0, -(-(micros(start) - origin) // stride)) * stride  # the first step inside
            starts.extend(islice(range(first, micros(end) - length + 1, stride), limit - len(starts)))
            if len(starts) >= limit:
                return starts
    return starts


def outside(schedule: Schedule | None, start: datetime, end: datetime, now: datetime) -> Rule | None:
    """The rule [start, end) breaks, or None if a booking may lie there (buffers aside: the database checks them)."""
    if schedule is None:
        return None
    low, high = bookable_window(schedule, now)
    if start < low:
        return Rule.NOTICE
    if end > high:
        return Rule.HORIZON
    working = working_spans(schedule, start, end)
    if working == [(start, end)]:
        return None
    zone = schedule.zone
    local_days = {start.astimezone(zone).date(), (end - timedelta(microseconds=1)).astimezone(zone).date()}
    overridden = {o.date for o in schedule.date_overrides}
    return Rule.OVERRIDE if local_days & overridden else Rule.HOURS
