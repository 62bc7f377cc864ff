"""Provider schedules through the real service: who may read and change one, what input is refused, and that
ListAvailableSlots, CreateBooking and UpdateBooking follow it (hours in the provider's zone, overrides, notice,
horizon, buffers, the last also under concurrency)."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import grpc
import pytest
from google.type import date_pb2, timeofday_pb2

from booking_api.booking.v1 import booking_pb2, events_pb2
from svc_common.eventstream import EventId
from tests.support.events import EventSystem, Subscription, admin_on, eventually
from tests.support.helpers import Caller, error_infos, expect_error, field_violations, ts, uid

Callers = Callable[[str, str], Caller]
BERLIN = ZoneInfo("Europe/Berlin")
pytestmark = pytest.mark.timeout(120)


def tod(hours: int, minutes: int = 0) -> timeofday_pb2.TimeOfDay:
    return timeofday_pb2.TimeOfDay(hours=hours, minutes=minutes)


def schedule(provider_id: str, zone: str = "Europe/Berlin", **fields: Any) -> booking_pb2.ProviderSchedule:
    """Monday to Friday 09:00-17:00 unless `weekly_hours` is given."""
    made = booking_pb2.ProviderSchedule(provider_id=provider_id, time_zone=zone)
    weekly = fields.pop("weekly_hours", [(day, tod(9), tod(17)) for day in range(1, 6)])
    made.weekly_hours.extend(booking_pb2.WorkingHours(day=d, start=s, end=e) for d, s, e in weekly)
    for day, hours in fields.pop("date_overrides", []):
        made.date_overrides.add(
            date=date_pb2.Date(year=day.year, month=day.month, day=day.day),
            hours=[booking_pb2.LocalHours(start=s, end=e) for s, e in hours],
        )
    for name, value in fields.items():
        getattr(made, name).FromTimedelta(value)
    return made


async def put(
    who: Caller, given: booking_pb2.ProviderSchedule, *, mask: list[str] | None = None, allow_missing: bool = True,
    request_id: str = "",
) -> booking_pb2.ProviderSchedule:  # fmt: skip
    request = booking_pb2.UpdateProviderScheduleRequest(
        schedule=given, allow_missing=allow_missing, request_id=request_id
    )
    request.update_mask.paths.extend(mask or [])
    response = await who.call("UpdateProviderSchedule", request)
    written: booking_pb2.ProviderSchedule = response.schedule
    return written


async def get(who: Caller, provider_id: str) -> booking_pb2.ProviderSchedule:
    response = await who.call("GetProviderSchedule", booking_pb2.GetProviderScheduleRequest(provider_id=provider_id))
    found: booking_pb2.ProviderSchedule = response.schedule
    return found


def next_weekday(weekday: int, weeks_ahead: int = 1) -> date:
    """A date of that ISO weekday at least a week from today (Berlin)."""
    today = datetime.now(BERLIN).date() + timedelta(weeks=weeks_ahead)
    return today + timedelta(days=(weekday - today.isoweekday()) % 7)


def berlin(day: date, hours: float) -> datetime:
    return (datetime.combine(day, time(), tzinfo=BERLIN) + timedelta(hours=hours)).astimezone(UTC)


async def create(
    who: Caller, provider_id: str, start: datetime, end: datetime, *, ignore: bool = False
) -> booking_pb2.Booking:
    request = booking_pb2.CreateBookingRequest(
        booking=booking_pb2.Booking(
            customer_id=uid("cust"), provider_id=provider_id, service_id="cut", start_time=ts(start), end_time=ts(end)
        ),
        ignore_availability=ignore,
    )
    response = await who.call("CreateBooking", request)
    booking: booking_pb2.Booking = response.booking
    return booking


async def test_a_provider_writes_its_own_schedule_anyone_reads_it_and_others_may_not_change_it(
    caller: Callers, db: asyncpg.Connection
) -> None:
    provider = caller("provider", uid("prov"))
    await expect_error(get(caller("user", uid("u")), provider.id), grpc.StatusCode.NOT_FOUND, "NO_SCHEDULE")
    await expect_error(put(provider, schedule(provider.id), allow_missing=False), grpc.StatusCode.NOT_FOUND)
    made = await put(provider, schedule(provider.id, buffer_after=timedelta(minutes=10)))
    assert made.etag == '"1"' and made.time_zone == "Europe/Berlin" and len(made.weekly_hours) == 5
    assert await get(caller("user", uid("u")), provider.id) == made  # any caller reads it
    for stranger in (caller("provider", uid("other")), caller("user", provider.id)):
        await expect_error(put(stranger, schedule(provider.id)), grpc.StatusCode.PERMISSION_DENIED, "NOT_OWN_SCHEDULE")
    # The mask changes only what it names; a stale etag is refused.
    changed = await put(caller("admin", uid("ops")), schedule(provider.id, buffer_before=timedelta(minutes=5),
                        weekly_hours=[]), mask=["buffer_before"])  # fmt: skip
    assert changed.etag == '"2"' and changed.buffer_before.ToTimedelta() == timedelta(minutes=5)
    assert changed.buffer_after.ToTimedelta() == timedelta(minutes=10) and len(changed.weekly_hours) == 5
    stale = schedule(provider.id)
    stale.etag = made.etag
    await expect_error(put(provider, stale), grpc.StatusCode.ABORTED, "ETAG_MISMATCH")
    # A request_id repeated returns the schedule without changing it again.
    again = [await put(provider, schedule(provider.id), request_id="r-1") for _ in range(2)]
    assert again[0] == again[1] and again[1].etag == '"3"'
    audit = await db.fetch(
        "SELECT action, actor_id, old_schedule, new_schedule FROM provider_schedule_audit WHERE provider_id = $1 "
        "ORDER BY seq", provider.id,
    )  # fmt: skip
    assert [(a["action"], a["actor_id"]) for a in audit] == [
        ("CREATED", provider.id), ("UPDATED", changed_by := audit[1]["actor_id"]), ("UPDATED", provider.id)
    ] and changed_by.startswith("ops")  # fmt: skip
    assert audit[0]["old_schedule"] is None and audit[1]["old_schedule"] is not None


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"zone": "Mars/Olympus"}, "schedule.time_zone", "unknown time zone"),
        ({"zone": ""}, "schedule.time_zone", "required"),
        ({"weekly_hours": [(1, tod(10), tod(9))]}, "schedule.weekly_hours[0].end", "after start"),
        ({"weekly_hours": [(1, tod(9), tod(12)), (1, tod(11), tod(13))]}, "schedule.weekly_hours[1]", "overlaps"),
        ({"weekly_hours": [(0, tod(9), tod(12))]}, "schedule.weekly_hours[0].day", "MONDAY to SUNDAY"),
        ({"weekly_hours": [(1, tod(24), tod(24))]}, "schedule.weekly_hours[0].start", "time of day"),
        ({"buffer_before": timedelta(seconds=-1)}, "schedule.buffer_before", "from 0 to 365 days"),
        ({"booking_horizon": timedelta(days=366)}, "schedule.booking_horizon", "from 0 to 365 days"),
        (
            {"date_overrides": [(date(2031, 1, 1) + timedelta(days=i), []) for i in range(101)]},
            "schedule.date_overrides",
            "at most 100",
        ),
    ],
)
async def test_bad_schedules_are_refused_naming_the_field(
    caller: Callers, fields: dict[str, Any], field: str, words: str
) -> None:
    provider = caller("provider", uid("prov"))
    error = await expect_error(
        put(provider, schedule(provider.id, fields.pop("zone", "Europe/Berlin"), **fields)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert words in field_violations(error).get(field, ""), field_violations(error)


async def test_an_end_of_24_00_closes_the_day_and_ranges_may_meet(caller: Callers) -> None:
    provider = caller("provider", uid("prov"))
    made = await put(provider, schedule(provider.id, weekly_hours=[(6, tod(9), tod(12)), (6, tod(12), tod(24))]))
    assert [(h.start.hours, h.end.hours) for h in made.weekly_hours] == [(9, 12), (12, 24)]


async def test_slots_follow_the_hours_in_the_providers_zone_and_each_is_bookable(caller: Callers) -> None:
    provider, admin = caller("provider", uid("prov")), caller("admin", uid("ops"))
    await put(provider, schedule(provider.id, buffer_after=timedelta(minutes=15)))
    monday = next_weekday(1)
    week = (berlin(monday, 0), berlin(monday, 24 * 7))
    await create(provider, provider.id, berlin(monday, 10), berlin(monday, 11))
    free, starts, zone = await provider.slots(provider.id, *week, timedelta(hours=1))
    assert zone == "Europe/Berlin"
    # Monday from 11:15 (the 10:00 booking's 15 minutes after it; before it, 09:00-09:45 is too short for an hour
    # that needs its own 15 minutes before 10:00), Tuesday to Friday whole, the weekend closed.
    assert free == [(berlin(monday, 11.25), berlin(monday, 17))] + [
        (berlin(monday + timedelta(days=d), 9), berlin(monday + timedelta(days=d), 17)) for d in range(1, 5)
    ]
    # Stepping by the duration from 09:00: on Monday the first that fits is 12:00; an hour may end at closing.
    assert starts[:5] == [berlin(monday, h) for h in (12, 13, 14, 15, 16)] and len(starts) == 5 + 4 * 8
    # Each slot can be booked as answered (one at a time: successive slots leave no room for the buffers).
    for start in starts:
        booked = await create(admin, provider.id, start, start + timedelta(hours=1))
        await admin.delete(booked.id)


async def test_a_time_outside_availability_is_refused_naming_the_rule_and_an_admin_may_ignore_it(
    caller: Callers, db: asyncpg.Connection
) -> None:
    provider, admin = caller("provider", uid("prov")), caller("admin", uid("ops"))
    christmas = next_weekday(4, weeks_ahead=2)  # a Thursday, closed by an override
    await put(provider, schedule(provider.id, minimum_notice=timedelta(days=2), booking_horizon=timedelta(days=60),
                                 date_overrides=[(christmas, [])]))  # fmt: skip
    tuesday = next_weekday(2)
    cases = {
        "hours": (berlin(tuesday, 16.5), berlin(tuesday, 17.5)),  # past closing
        "override": (berlin(christmas, 10), berlin(christmas, 11)),
        "notice": (datetime.now(UTC) + timedelta(hours=1), datetime.now(UTC) + timedelta(hours=2)),
        "horizon": (berlin(next_weekday(2, weeks_ahead=10), 10), berlin(next_weekday(2, weeks_ahead=10), 11)),
    }
    for rule, (start, end) in cases.items():
        error = await expect_error(
            create(provider, provider.id, start, end), grpc.StatusCode.FAILED_PRECONDITION, "OUTSIDE_AVAILABILITY"
        )
        assert error_infos(error)[0].metadata["rule"] == rule, rule
    await expect_error(
        create(provider, provider.id, *cases["hours"], ignore=True), grpc.StatusCode.PERMISSION_DENIED, "ADMIN_ONLY"
    )
    made = await create(admin, provider.id, *cases["hours"], ignore=True)
    reason = await db.fetchval("SELECT reason FROM booking_audit WHERE booking_id = $1::uuid", made.id)
    assert "outside the provider's availability (hours), ignored by an admin" in reason
    # A move is held to the same rules.
    inside = await create(provider, provider.id, berlin(tuesday, 10), berlin(tuesday, 11))
    move = booking_pb2.UpdateBookingRequest(
        booking=booking_pb2.Booking(
            id=inside.id, start_time=ts(berlin(christmas, 10)), end_time=ts(berlin(christmas, 11))
        )
    )
    move.update_mask.paths.extend(["start_time", "end_time"])
    error = await expect_error(provider.call("UpdateBooking", move), grpc.StatusCode.FAILED_PRECONDITION)
    assert error_infos(error)[0].metadata["rule"] == "override"


async def test_buffers_hold_under_fifty_concurrent_creates_and_a_move_racing_a_create(
    caller: Callers, db: asyncpg.Connection
) -> None:
    """Every start 15 minutes apart, 30-minute bookings, 10 minutes of buffer each side: each create overlaps its
    neighbours' reach; whatever wins, no two active bookings end up closer than the buffers."""
    provider, admin = caller("provider", uid("prov")), caller("admin", uid("ops"))
    await put(provider, schedule(provider.id, weekly_hours=[(d, tod(0), tod(24)) for d in range(1, 8)],
                                 buffer_before=timedelta(minutes=10), buffer_after=timedelta(minutes=10)))  # fmt: skip
    base = berlin(next_weekday(3), 8)
    starts = [base + timedelta(minutes=15 * i) for i in range(50)]
    results = await asyncio.gather(
        *(create(admin, provider.id, s, s + timedelta(minutes=30)) for s in starts), return_exceptions=True
    )
    made = [r for r in results if isinstance(r, booking_pb2.Booking)]
    refused = [r for r in results if not isinstance(r, booking_pb2.Booking)]
    assert made and all(
        isinstance(r, grpc.aio.AioRpcError) and r.code() == grpc.StatusCode.ALREADY_EXISTS for r in refused
    )
    rows = await db.fetch(
        "SELECT start_time, end_time FROM bookings WHERE provider_id = $1 AND delete_time IS NULL ORDER BY start_time",
        provider.id,
    )
    assert all(b["start_time"] - a["end_time"] >= timedelta(minutes=20) for a, b in itertools.pairwise(rows))
    # A move racing a create into the same free time, 5 minutes apart: one of them wins.
    target = rows[-1]["end_time"] + timedelta(hours=2)
    move = booking_pb2.UpdateBookingRequest(
        booking=booking_pb2.Booking(id=made[0].id, start_time=ts(target), end_time=ts(target + timedelta(minutes=30)))
    )
    move.update_mask.paths.extend(["start_time", "end_time"])
    later = target + timedelta(minutes=35)
    racers = await asyncio.gather(
        admin.call("UpdateBooking", move),
        create(admin, provider.id, later, later + timedelta(minutes=30)),
        return_exceptions=True,
    )
    assert sum(not isinstance(r, BaseException) for r in racers) == 1, racers
    rows = await db.fetch(
        "SELECT start_time, end_time FROM bookings WHERE provider_id = $1 AND delete_time IS NULL ORDER BY start_time",
        provider.id,
    )
    assert all(b["start_time"] - a["end_time"] >= timedelta(minutes=20) for a, b in itertools.pairwise(rows))


async def test_a_schedule_change_reaches_the_subscribers_of_that_provider_whatever_their_role(
    system: EventSystem, channels: list[grpc.aio.Channel]
) -> None:
    """A view of free slots refreshes on it: a user watching the provider gets it (schedules are public), as does
    an unfiltered admin; a watch of another provider or of one booking does not. It comes in stream order with
    the booking events, and resumes like them."""
    booking, notify = system.booking(), system.notify()
    provider_id = uid("prov")
    provider = await admin_on(booking, channels)
    provider = Caller(provider.stub, "provider", provider_id)
    watchers = {
        "user of the provider": (Subscription("user", uid("u")), {"provider_id": provider_id}),
        "admin": (Subscription("admin", uid("ops")), {}),
        "another provider": (Subscription("admin", uid("ops")), {"provider_id": uid("other")}),
        "one booking": (Subscription("admin", uid("ops")), {"booking_id": str(uuid.uuid4())}),
    }
    for watcher, filters in watchers.values():
        await watcher.open(notify.address, filters=filters)
    try:
        made = await put(provider, schedule(provider_id, buffer_after=timedelta(minutes=5)))
        changed = await put(provider, schedule(provider_id, buffer_after=timedelta(minutes=10)))
        for name in ("user of the provider", "admin"):
            watcher = watchers[name][0]
            await eventually(lambda w=watcher: len(w.schedule_events) == 2, lambda n=name: n, within=30)  # type: ignore[misc]
            first, second = watcher.schedule_events
            assert [e.type for e in (first, second)] == [
                events_pb2.SCHEDULE_EVENT_TYPE_CREATED, events_pb2.SCHEDULE_EVENT_TYPE_UPDATED
            ]  # fmt: skip
            assert (first.schedule, second.schedule) == (made, changed) and second.actor.id == provider_id
            assert EventId.parse(second.event_id) > EventId.parse(first.event_id)  # type: ignore[operator]
        # Resuming from history gives them too.
        history = Subscription("user", uid("u"))
        await history.open(notify.address, filters={"provider_id": provider_id, "resume_after": "0-0"})
        await eventually(lambda: len(history.schedule_events) == 2, lambda: "history", within=30)
        await history.close()
        for name in ("another provider", "one booking"):
            assert watchers[name][0].schedule_events == [], name
    finally:
        for watcher, _ in watchers.values():
            await watcher.close()
