"""The outbox's read side (svc_common.outbox) as its two readers use it: the encoding of a placed row is what
the API shows of the booking after that change, and what the relay published to Redis is, byte for byte, what
notify's fallback makes of the same row."""

from __future__ import annotations

import asyncio

import asyncpg
import grpc
import pytest
import redis.asyncio as redis

from booking_api.booking.v1 import events_pb2
from booking_service.relay import entry_of
from notify_service.fallback import _event as fallback_event
from svc_common.eventstream import EventId
from svc_common.outbox import AFTER_SQL, SKIPPED_REASON_MAX, PlacedRow
from tests.support.events import EventSystem, admin_on
from tests.support.helpers import fresh_slot, uid
from tests.support.servers import stream_key

pytestmark = pytest.mark.timeout(120)


async def test_a_placed_rows_encoding_is_the_api_view_and_the_relays_entry(
    system: EventSystem, channels: list[grpc.aio.Channel]
) -> None:
    admin = await admin_on(system.booking(), channels)
    made = await admin.create(provider_id=uid("prov"), customer_id=uid("cust"), notes="window seat")
    deleted = await admin.delete(made.id, reason="moved")
    restored = await admin.restore(made.id)
    start, end = fresh_slot()
    moved = await admin.update(made.id, "start_time", "end_time", "notes", start=start, end=end, notes="aisle")
    start, end = fresh_slot()
    held = await admin.hold(provider_id=made.provider_id, customer_id=made.customer_id, start=start, end=end)
    confirmed = await admin.confirm(held.id, notes="paid")
    shown = [made, deleted, restored, moved, held, confirmed]
    types = [events_pb2.BOOKING_EVENT_TYPE_CREATED, events_pb2.BOOKING_EVENT_TYPE_DELETED,
             events_pb2.BOOKING_EVENT_TYPE_RESTORED, events_pb2.BOOKING_EVENT_TYPE_UPDATED,
             events_pb2.BOOKING_EVENT_TYPE_HELD, events_pb2.BOOKING_EVENT_TYPE_CONFIRMED]  # fmt: skip
    await system.wait_relayed(6)

    conn = await asyncpg.connect(system.database_url)
    try:
        rows = [PlacedRow.of(record) for record in await conn.fetch(AFTER_SQL, 0, 10)]
    finally:
        await conn.close()
    assert [row.message().type for row in rows] == types
    for row, booking in zip(rows, shown, strict=True):
        assert row.message().booking == booking, (row.message().booking, booking)
        assert row.message().actor.id == admin.id and row.message().event_id == str(row.event_id)
    assert rows[1].message().booking.deleted_by.id == admin.id and rows[1].message().booking.deletion_reason == "moved"

    client = redis.Redis.from_url(system.redis.url)
    try:
        entries = await client.xrange(stream_key(system.database_url)) or []
    finally:
        await client.aclose()
    assert [(EventId.parse(entry_id or b""), fields) for entry_id, fields in entries] == [
        (row.event_id, row.fields()) for row in rows
    ]


async def test_a_row_no_reader_can_encode_is_the_same_placeholder_on_both_paths(
    system: EventSystem, channels: list[grpc.aio.Channel]
) -> None:
    """The relay's entry for a row it sets aside and the fallback's reading of that row are one placeholder
    (PlacedRow.entry_fields): the same bytes, the error cut to SKIPPED_REASON_MAX characters."""
    admin = await admin_on(system.booking(), channels)
    conn = await asyncpg.connect(system.database_url)
    try:
        garbage = "x" * 3000  # the error names the value: longer than the placeholder keeps
        await conn.execute(
            "INSERT INTO booking_outbox (event_type, booking, actor_id, actor_name, actor_role)"
            " VALUES ('CREATED', jsonb_build_object('id', 'x', 'start_time', $1::text), 'e', 'e', 'user')",
            garbage,
        )
        await admin.create(provider_id=uid("prov"), customer_id=uid("cust"))
        await system.wait_relayed(2)
        # Relayed once the event after it is in the stream.
        client = redis.Redis.from_url(system.redis.url)
        try:
            deadline = asyncio.get_running_loop().time() + 30
            while len(entries := await client.xrange(stream_key(system.database_url)) or []) < 2:
                assert asyncio.get_running_loop().time() < deadline, entries
                await asyncio.sleep(0.05)
        finally:
            await client.aclose()
        poison = PlacedRow.of((await conn.fetch(AFTER_SQL, 0, 1))[0])
    finally:
        await conn.close()
    fields, error = poison.entry_fields()
    assert error is not None and len(error) == SKIPPED_REASON_MAX and garbage[:100] in error
    relayed_id, relayed = entries[0]
    assert (EventId.parse(relayed_id or b""), relayed) == (poison.event_id, fields) == entry_of(poison)[0]
    read = fallback_event(poison)
    assert read is not None and read.id == poison.event_id and read.payload is None  # a place readers pass over
