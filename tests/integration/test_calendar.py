"""Calendar reads: ListBookings in a time window (with the other filters, across pages while others write, an
index scan at 100,000 bookings), and ListAvailableSlots (free time that is bookable, naming no booking)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import grpc

from booking_api.booking.v1 import booking_pb2
from booking_service import schema
from booking_service.sql import AVAILABILITY_SQL, list_sql
from tests.support.helpers import Caller, expect_error, field_violations, fresh_slot, ts, uid

Callers = Callable[[str, str], Caller]
HOUR = timedelta(hours=1)


async def window(who: Caller, start: datetime, end: datetime, page_size: int = 0, **filters: object) -> list[str]:
    """Every booking id overlapping [start, end), over all pages."""
    ids: list[str] = []
    token = ""
    while True:
        request = booking_pb2.ListBookingsRequest(page_size=page_size, page_token=token, **filters)  # type: ignore[arg-type]
        request.overlaps.start_time.CopyFrom(ts(start))
        request.overlaps.end_time.CopyFrom(ts(end))
        response = await who.call("ListBookings", request)
        ids.extend(b.id for b in response.bookings)
        token = response.next_page_token
        if not token:
            return ids


async def test_a_window_keeps_the_bookings_overlapping_it_with_the_other_filters(caller: Callers) -> None:
    admin, alice = caller("admin", uid("admin")), caller("user", uid("alice"))
    provider = uid("prov")
    day, _ = fresh_slot(hours=24)
    made = {
        "before": await alice.create(provider_id=provider, start=day - 2 * HOUR, end=day - HOUR),
        "ends_at_start": await alice.create(provider_id=provider, start=day - HOUR, end=day),
        "across_start": await alice.create(provider_id=uid("prov"), start=day - HOUR, end=day + HOUR),
        "inside": await admin.create(
            provider_id=provider, customer_id=uid("bob"), start=day + HOUR, end=day + 2 * HOUR
        ),
        "across_end": await alice.create(provider_id=provider, start=day + 7 * HOUR, end=day + 9 * HOUR),
        "starts_at_end": await alice.create(provider_id=uid("prov"), start=day + 8 * HOUR, end=day + 10 * HOUR),
    }
    ids = {name: b.id for name, b in made.items()}
    start, end = day, day + 8 * HOUR
    assert await window(admin, start, end) == [ids["across_start"], ids["inside"], ids["across_end"]]
    assert await window(admin, start, end, provider_id=provider) == [ids["inside"], ids["across_end"]]
    assert await window(alice, start, end) == [ids["across_start"], ids["across_end"]]  # her own only
    assert await window(admin, start, end, page_size=1, customer_id=alice.id) == [
        ids["across_start"],
        ids["across_end"],
    ]
    await alice.delete(ids["across_end"])
    assert await window(admin, start, end, provider_id=provider) == [ids["inside"]]
    assert await window(admin, start, end, provider_id=provider, show_deleted=True) == [
        ids["inside"],
        ids["across_end"],
    ]
    for bad in ((end, start), (start, start)):
        error = await expect_error(window(admin, *bad), grpc.StatusCode.INVALID_ARGUMENT)
        assert "overlaps.end_time" in field_violations(error)
    request = booking_pb2.ListBookingsRequest()
    request.overlaps.start_time.CopyFrom(ts(start))  # no end
    error = await expect_error(admin.call("ListBookings", request), grpc.StatusCode.INVALID_ARGUMENT)
    assert "overlaps.end_time" in field_violations(error)


async def test_a_page_token_belongs_to_its_window(caller: Callers) -> None:
    admin = caller("admin", uid("admin"))
    provider = uid("prov")
    day, _ = fresh_slot(hours=24)
    for n in range(3):
        await admin.create(provider_id=provider, customer_id="c", start=day + n * HOUR, end=day + (n + 1) * HOUR)
    request = booking_pb2.ListBookingsRequest(page_size=1, provider_id=provider)
    request.overlaps.start_time.CopyFrom(ts(day))
    request.overlaps.end_time.CopyFrom(ts(day + 24 * HOUR))
    token = (await admin.call("ListBookings", request)).next_page_token
    request.overlaps.end_time.CopyFrom(ts(day + 23 * HOUR))
    request.page_token = token
    await expect_error(admin.call("ListBookings", request), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN")


async def test_a_window_across_page_boundaries_while_others_write_never_repeats_or_skips(caller: Callers) -> None:
    admin = caller("admin", uid("admin"))
    provider = uid("prov")
    day, _ = fresh_slot(hours=24)
    start, end = day, day + 24 * HOUR
    minutes = timedelta(minutes=10)
    # 60 bookings in the window that stay throughout, 10 minutes each, 20 minutes apart.
    steady = [
        (
            await admin.create(
                provider_id=provider, customer_id="c", start=day + 2 * n * minutes, end=day + (2 * n + 1) * minutes
            )
        ).id
        for n in range(60)
    ]
    stop = asyncio.Event()

    async def churn() -> None:  # creates and deletes in the gaps, in and out of the window, while pages are read
        n = 0
        while not stop.is_set():
            at = day + (2 * (n % 60) + 1) * minutes
            booking = await admin.create(provider_id=provider, customer_id="c", start=at, end=at + minutes)
            await admin.delete(booking.id)
            n += 1

    writer = asyncio.create_task(churn())
    try:
        seen = await window(admin, start, end, page_size=7, provider_id=provider)
    finally:
        stop.set()
        await writer
    assert len(seen) == len(set(seen))  # no repeats
    assert [i for i in seen if i in set(steady)] == steady  # every steady one, in start order


async def test_a_providers_week_is_an_index_scan_among_100000_bookings(new_database: Callable[[], str]) -> None:
    conn = await asyncpg.connect(new_database())
    try:
        await schema.migrate(conn)
        # 100,000 bookings over ~11 years: 100 providers of 1,000 bookings, one an hour, 1 hour each.
        await conn.execute(
            """
            INSERT INTO bookings (id, customer_id, provider_id, service_id, start_time, end_time, created_by)
            SELECT gen_random_uuid(), 'c' || (n % 500), 'p' || (n % 100), 'haircut',
                   timestamptz '2030-01-01' + make_interval(hours => n),
                   timestamptz '2030-01-01' + make_interval(hours => n + 1), 'seed'
              FROM generate_series(1, 100000) AS n
            """
        )
        await conn.execute("ANALYZE bookings")
        week = (
            datetime.fromisoformat("2035-06-04T00:00:00+00:00"),
            datetime.fromisoformat("2035-06-11T00:00:00+00:00"),
        )
        sql = list_sql(customer=False, provider=True, overlaps=True, after=False, deleted=False)
        plan = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", 51, "p7", *week)
        text = json.dumps(plan)
        print(f"\nListBookings, one provider's week among 100,000 bookings:\n{plan_lines(plan)}")
        assert "bookings_no_overlap" in text and "Seq Scan" not in text, text
        rows = await conn.fetch(sql, 51, "p7", *week)
        brute = "SELECT id FROM bookings WHERE provider_id = 'p7' AND start_time < $2 AND end_time > $1 ORDER BY 1"
        assert sorted(r["id"] for r in rows) == [r["id"] for r in await conn.fetch(brute, *week)] and rows
        free_plan = json.loads(await conn.fetchval(f"EXPLAIN (FORMAT JSON) {AVAILABILITY_SQL}", "p7", *week))
        scans = {(node.get("Node Type"), node.get("Relation Name")) for node in plan_nodes(free_plan)}
        assert "bookings_no_overlap" in json.dumps(free_plan) and ("Seq Scan", "bookings") not in scans, scans
    finally:
        await conn.close()


def plan_nodes(plan: Any) -> list[dict[str, Any]]:
    """Every node of an EXPLAIN (FORMAT JSON), parsed."""
    nodes: list[dict[str, Any]] = []
    stack = [entry["Plan"] for entry in plan]
    while stack:
        node = stack.pop()
        nodes.append(node)
        stack.extend(node.get("Plans", []))
    return nodes


def plan_lines(plan: str) -> str:
    """The node types and index names of an EXPLAIN (FORMAT JSON), indented by depth."""
    lines: list[str] = []

    def walk(node: dict[str, object], depth: int) -> None:
        index = f" using {node['Index Name']}" if "Index Name" in node else ""
        lines.append(f"{'  ' * depth}{node['Node Type']}{index}")
        for child in node.get("Plans", []):  # type: ignore[attr-defined]
            walk(child, depth + 1)

    walk(json.loads(plan)[0]["Plan"], 1)
    return "\n".join(lines)


async def test_free_slots_are_the_gaps_between_active_bookings_and_each_is_bookable(caller: Callers) -> None:
    prov, alice, stranger = caller("provider", uid("prov")), caller("user", uid("alice")), caller("user", uid("x"))
    day, _ = fresh_slot(hours=24)

    def at(hours: float) -> datetime:
        return day + timedelta(hours=hours)

    await prov.create(provider_id=prov.id, customer_id=alice.id, start=at(-1), end=at(1))  # across the start
    await prov.create(provider_id=prov.id, customer_id=alice.id, start=at(3), end=at(4))
    await prov.create(provider_id=prov.id, customer_id=alice.id, start=at(4), end=at(4.25))  # back to back
    await prov.create(provider_id=prov.id, customer_id=alice.id, start=at(4.5), end=at(5))  # a 15-minute gap before
    gone = await prov.create(provider_id=prov.id, customer_id=alice.id, start=at(6), end=at(7))
    await prov.delete(gone.id)  # its slot is free
    await prov.create(provider_id=prov.id, customer_id=alice.id, start=at(7.5), end=at(9))  # across the end
    other = caller("provider", uid("other"))
    await other.create(provider_id=other.id, customer_id=alice.id, start=at(1), end=at(2))

    free = await stranger.free(prov.id, at(0), at(8), timedelta(minutes=30))  # any caller may ask
    assert free == [(at(1), at(3)), (at(5), at(7.5))]
    assert await stranger.free(prov.id, at(0), at(8), timedelta(minutes=15)) == [
        (at(1), at(3)), (at(4.25), at(4.5)), (at(5), at(7.5))
    ]  # fmt: skip
    assert await stranger.free(prov.id, at(0), at(8), timedelta(hours=3)) == []
    assert await stranger.free(uid("nobody"), at(0), at(8), timedelta(hours=8)) == [(at(0), at(8))]
    # Correct by construction: each interval returned can be booked whole, at once.
    for start, end in free:
        await alice.create(provider_id=prov.id, start=start, end=end)
    quarter = timedelta(minutes=15)  # slot starts every microsecond would be too many to answer
    assert await stranger.free(prov.id, at(0), at(8), timedelta(microseconds=1), quarter) == [(at(4.25), at(4.5))]


async def test_more_free_intervals_than_the_bound_are_refused_not_sent(caller: Callers, db: asyncpg.Connection) -> None:
    """10,001 one-minute bookings a minute apart make 10,002 gaps: one answer would be too many."""
    alice, provider = caller("user", uid("alice")), uid("prov")
    day, _ = fresh_slot(hours=24)
    await db.execute(
        """
        INSERT INTO bookings (id, customer_id, provider_id, service_id, start_time, end_time, created_by)
        SELECT gen_random_uuid(), 'c', $1, 's', $2::timestamptz + make_interval(mins => 2 * n),
               $2::timestamptz + make_interval(mins => 2 * n + 1), 'seed'
          FROM generate_series(0, 10000) AS n
        """,
        provider,
        day,
    )
    end = day + timedelta(days=15)
    error = await expect_error(
        alice.free(provider, day - HOUR, end, timedelta(minutes=1)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "TOO_MANY_FREE_INTERVALS",
    )
    assert "interval" in field_violations(error)
    assert len(await alice.free(provider, day - HOUR, end, timedelta(minutes=2))) == 2  # before and after them


async def test_free_slots_refuse_a_bad_request_naming_the_field(caller: Callers) -> None:
    alice = caller("user", uid("alice"))
    day, _ = fresh_slot()

    async def refused(field: str, **fields: object) -> None:
        request = booking_pb2.ListAvailableSlotsRequest(**{"provider_id": "p", **fields})  # type: ignore[arg-type]
        if "interval" not in fields:
            request.interval.start_time.CopyFrom(ts(day))
            request.interval.end_time.CopyFrom(ts(day + HOUR))
        if "duration" not in fields:
            request.duration.FromTimedelta(timedelta(minutes=30))
        error = await expect_error(alice.call("ListAvailableSlots", request), grpc.StatusCode.INVALID_ARGUMENT)
        assert field in field_violations(error), field_violations(error)

    def interval(start: datetime, end: datetime) -> dict[str, object]:
        return {"start_time": ts(start), "end_time": ts(end)}

    def duration(**length: float) -> object:
        value = booking_pb2.ListAvailableSlotsRequest().duration
        value.FromTimedelta(timedelta(**length))
        return value

    await refused("provider_id", provider_id="")
    await refused("interval", interval=None)
    await refused("interval.end_time", interval={"start_time": ts(day)})
    await refused("interval.end_time", interval=interval(day + HOUR, day))
    await refused("interval", interval=interval(day, day + timedelta(days=31, seconds=1)))
    await refused("duration", duration=None)
    await refused("duration", duration=duration(seconds=0))
    await refused("duration", duration=duration(seconds=-60))
    await refused("duration", duration={"seconds": 1, "nanos": 1})
