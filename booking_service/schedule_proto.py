"""Provider schedules between protobuf and the domain (booking_service.availability), with every check of
UpdateProviderSchedule's input: one field violation per problem, named by its path in the request."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import date, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from google.protobuf import duration_pb2
from google.type import date_pb2, timeofday_pb2

from booking_api.booking.v1 import booking_pb2
from booking_service.availability import DAY_SECONDS, DateOverride, LocalRange, Schedule, WorkingHours
from booking_service.convert import timestamp_to_proto
from svc_common.validation import Checker

MAX_DURATION = timedelta(days=365)  # buffers, notice and horizon
MAX_FUTURE_OVERRIDES = 100
MAX_RANGES = 1000  # weekly ranges, and overrides in all (past ones included)
MAX_ZONE_CHARS = 64
DURATIONS = ("buffer_before", "buffer_after", "minimum_notice", "booking_horizon")


def _zone(check: Checker, field: str, name: str) -> str:
    if not name:
        check.fail(field, "required: an IANA time zone name, such as Europe/Berlin")
        return "UTC"
    try:
        if len(name) > MAX_ZONE_CHARS:
            raise ValueError(name)
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        check.fail(field, f"unknown time zone {name[:MAX_ZONE_CHARS]!r}: use an IANA name, such as Europe/Berlin")
        return "UTC"
    return name


def _seconds(check: Checker, field: str, value: timeofday_pb2.TimeOfDay, *, end: bool) -> int | None:
    """Seconds since local midnight; 24:00 only as an end."""
    if (value.hours, value.minutes, value.seconds, value.nanos) == (24, 0, 0, 0) and end:
        return DAY_SECONDS
    if not (0 <= value.hours <= 23 and 0 <= value.minutes <= 59 and 0 <= value.seconds <= 59) or value.nanos:
        check.fail(field, "must be a time of day in whole seconds, 00:00:00 to 23:59:59 (an end may be 24:00)")
        return None
    return value.hours * 3600 + value.minutes * 60 + value.seconds


def _ranges(check: Checker, field: str, ranges: Sequence[tuple[str, LocalRange]]) -> None:
    """Each range ends after it starts; no two overlap (meeting is fine)."""
    for path, hours in ranges:
        if hours.end <= hours.start:
            check.fail(f"{path}.end", "must be after start")
    ordered = sorted((hours.start, hours.end, path) for path, hours in ranges if hours.end > hours.start)
    for (_, first_end, _), (second_start, _, second_path) in itertools.pairwise(ordered):
        if second_start < first_end:
            check.fail(second_path, f"overlaps another range of {field}")


def _range(
    check: Checker, path: str, start: timeofday_pb2.TimeOfDay, end: timeofday_pb2.TimeOfDay
) -> LocalRange | None:
    low, high = _seconds(check, f"{path}.start", start, end=False), _seconds(check, f"{path}.end", end, end=True)
    return LocalRange(low, high) if low is not None and high is not None else None


def _date(check: Checker, field: str, value: date_pb2.Date) -> date | None:
    try:
        return date(value.year, value.month, value.day)
    except ValueError:
        check.fail(field, "must be a full date (year, month and day)")
        return None


def _duration(check: Checker, field: str, value: duration_pb2.Duration) -> timedelta:
    if value.nanos % 1000:
        check.fail(field, "must have whole microseconds")
        return timedelta(0)
    got = value.ToTimedelta()
    if not timedelta(0) <= got <= MAX_DURATION:
        check.fail(field, f"must be from 0 to {MAX_DURATION.days} days")
        return timedelta(0)
    return got


def schedule_from_proto(
    check: Checker, given: booking_pb2.ProviderSchedule, provider_id: str, today: date, fields: Sequence[str]
) -> Schedule:
    """The schedule `given` describes, checking the `fields` named (the others keep their defaults)."""
    prefix = "schedule"
    zone = _zone(check, f"{prefix}.time_zone", given.time_zone) if "time_zone" in fields else "UTC"
    weekly: list[WorkingHours] = []
    if "weekly_hours" in fields:
        if len(given.weekly_hours) > MAX_RANGES:
            check.fail(f"{prefix}.weekly_hours", f"at most {MAX_RANGES} ranges")
        by_day: dict[int, list[tuple[str, LocalRange]]] = {}
        for i, hours in enumerate(given.weekly_hours[:MAX_RANGES]):
            path = f"{prefix}.weekly_hours[{i}]"
            if not 1 <= hours.day <= 7:
                check.fail(f"{path}.day", "required: MONDAY to SUNDAY")
                continue
            local = _range(check, path, hours.start, hours.end)
            if local is not None:
                by_day.setdefault(hours.day, []).append((path, local))
                weekly.append(WorkingHours(hours.day, local))
        for ranges in by_day.values():
            _ranges(check, "that day", ranges)
    overrides: list[DateOverride] = []
    if "date_overrides" in fields:
        if len(given.date_overrides) > MAX_RANGES:
            check.fail(f"{prefix}.date_overrides", f"at most {MAX_RANGES} overrides")
        seen: set[date] = set()
        for i, override in enumerate(given.date_overrides[:MAX_RANGES]):
            path = f"{prefix}.date_overrides[{i}]"
            day = _date(check, f"{path}.date", override.date)
            if day is None:
                continue
            if day in seen:
                check.fail(f"{path}.date", f"{day} has another override")
            seen.add(day)
            ranges = [
                (f"{path}.hours[{j}]", local)
                for j, hours in enumerate(override.hours)
                if (local := _range(check, f"{path}.hours[{j}]", hours.start, hours.end)) is not None
            ]
            _ranges(check, "that date", ranges)
            overrides.append(DateOverride(day, tuple(local for _, local in ranges)))
        if sum(day >= today for day in seen) > MAX_FUTURE_OVERRIDES:
            check.fail(f"{prefix}.date_overrides", f"at most {MAX_FUTURE_OVERRIDES} overrides from today on")
    before, after, notice, horizon = (
        _duration(check, f"{prefix}.{name}", getattr(given, name)) if name in fields else timedelta(0)
        for name in DURATIONS
    )
    return Schedule(
        provider_id=provider_id,
        time_zone=zone,
        weekly_hours=tuple(sorted(weekly, key=lambda w: (w.day, w.hours.start))),
        date_overrides=tuple(sorted(overrides, key=lambda o: o.date)),
        buffer_before=before,
        buffer_after=after,
        minimum_notice=notice,
        booking_horizon=horizon,
    )


def _time_of_day(seconds: int) -> timeofday_pb2.TimeOfDay:
    return timeofday_pb2.TimeOfDay(hours=seconds // 3600, minutes=seconds % 3600 // 60, seconds=seconds % 60)


def _proto_duration(value: timedelta) -> duration_pb2.Duration:
    made = duration_pb2.Duration()
    made.FromTimedelta(value)
    return made


def schedule_to_proto(schedule: Schedule) -> booking_pb2.ProviderSchedule:
    made = booking_pb2.ProviderSchedule(
        provider_id=schedule.provider_id,
        time_zone=schedule.time_zone,
        weekly_hours=[
            booking_pb2.WorkingHours(
                day=w.day,  # google.type.DayOfWeek numbers the days as ISO does
                start=_time_of_day(w.hours.start),
                end=_time_of_day(w.hours.end),
            )
            for w in schedule.weekly_hours
        ],
        date_overrides=[
            booking_pb2.DateOverride(
                date=date_pb2.Date(year=o.date.year, month=o.date.month, day=o.date.day),
                hours=[booking_pb2.LocalHours(start=_time_of_day(h.start), end=_time_of_day(h.end)) for h in o.hours],
            )
            for o in schedule.date_overrides
        ],
        buffer_before=_proto_duration(schedule.buffer_before),
        buffer_after=_proto_duration(schedule.buffer_after),
        minimum_notice=_proto_duration(schedule.minimum_notice),
        booking_horizon=_proto_duration(schedule.booking_horizon),
        etag=f'"{schedule.version}"',
    )
    if schedule.update_time is not None:
        made.update_time.CopyFrom(timestamp_to_proto(schedule.update_time))
    return made
