"""The relay against an outbox that lacks what the stream holds, as on a standby promoted after the primary
published events whose commits it replicated but whose placing it did not (their rows have no position) or
whose commits it lost too: the relay places a seam before anything else, events the stream already has take
their positions from it, and a replay from `0-0` gets every change once."""

from __future__ import annotations

import asyncpg
import grpc
import pytest

from svc_common.eventstream import SEAM_GAP, EventId
from svc_common.outbox import change_of
from tests.support.events import EventSystem, Subscription, admin_on, eventually
from tests.support.helpers import uid

pytestmark = pytest.mark.timeout(120)


async def test_a_standby_that_got_the_commits_but_not_the_placing_delivers_each_change_once(
    system: EventSystem, channels: list[grpc.aio.Channel]
) -> None:
    booking = system.booking()
    admin = await admin_on(booking, channels)
    provider = uid("prov")
    for _ in range(8):
        await admin.create(provider_id=provider, customer_id=uid("cust"))
    placed = await system.wait_relayed(8)
    await system.wait_published(placed[-1][0])
    booking.stop()
    conn = await asyncpg.connect(system.database_url)
    try:
        # As the standby has it: the last three committed, not placed; the last one not even committed.
        await conn.execute("DELETE FROM booking_outbox WHERE seq = 8")
        await conn.execute("UPDATE booking_outbox SET seq = NULL, stream_ms = NULL WHERE seq > 5")
        await conn.execute("UPDATE booking_outbox_state SET published_seq = least(published_seq, 5)")
    finally:
        await conn.close()

    admin = await admin_on(system.booking(), channels)
    for _ in range(2):
        await admin.create(provider_id=provider, customer_id=uid("cust"))
    rows = await system.wait_relayed(9)
    assert [event_id for event_id, _, _ in rows[:7]] == [event_id for event_id, _, _ in placed[:7]]  # adopted
    assert all(EventId.parse(event_id).seq > 8 + SEAM_GAP for event_id, _, _ in rows[7:])  # type: ignore[union-attr]

    notify = system.notify()
    from_origin = Subscription("admin", uid("origin"))
    await from_origin.open(notify.address, filters={"resume_after": "0-0"})
    try:
        await eventually(lambda: len(from_origin.events) >= 10 or from_origin.error is not None,
                         lambda: f"{len(from_origin.events)} of 10 events replayed", within=30)  # fmt: skip
        assert from_origin.error is None
        changes = [change_of(event) for event in from_origin.events]
        assert len(changes) == len(set(changes)) == 10, changes  # 8 from before (the 8th lost), 2 after: each once
        assert from_origin.ids[:8] == [event_id for event_id, _, _ in placed]
    finally:
        await from_origin.close()
