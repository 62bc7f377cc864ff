"""The PostgreSQL side of the outbox relay: one dedicated connection that holds the relay lock, listens for
commits and runs the relay's SQL.

Write statements insert their change event into `booking_outbox` (see storage.py). The relay then, on this
connection:
1. gives committed events their stream position (`seq`, gapless, in outbox id order; `stream_ms`, never going
   back). Changes of one booking are serialised by its row lock and take their outbox id after that lock, so
   id order, hence seq order, is their commit order;
2. reads the events that have a position but are not published yet, in seq order;
3. after publishing them (events.py), marks them published.

Only the instance holding the session advisory lock RELAY_LOCK_ID relays, so one relay hands out positions at a
time; if its connection dies, the lock goes with it and another instance takes over. A relay that lost its lock
can at worst publish events again, under the same ids, which Redis refuses (stream ids only increase).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from booking_service.domain import Actor, AuditAction, Booking
from booking_service.storage import Record, booking_from_json
from svc_common.auth import Role
from svc_common.eventstream import EventId

RELAY_LOCK_ID = 0x6B6F6F63  # pg_advisory_lock key: held by the one relaying instance
CHANNEL = "booking_outbox"

ASSIGN_SQL = """
WITH state AS (
    SELECT last_seq, greatest(last_ms, (extract(epoch FROM clock_timestamp()) * 1000)::bigint) AS ms
      FROM booking_outbox_state FOR UPDATE
), pending AS (
    SELECT id, row_number() OVER (ORDER BY id) AS n
      FROM (SELECT id FROM booking_outbox WHERE seq IS NULL ORDER BY id LIMIT $1) first_ones
), assigned AS (
    UPDATE booking_outbox o SET seq = state.last_seq + pending.n, stream_ms = state.ms
      FROM pending, state WHERE o.id = pending.id
    RETURNING o.seq
), moved AS (
    UPDATE booking_outbox_state SET last_seq = state.last_seq + (SELECT count(*) FROM pending), last_ms = state.ms
      FROM state WHERE EXISTS (SELECT 1 FROM pending)
)
SELECT count(*) FROM assigned
"""

UNPUBLISHED_SQL = """
SELECT seq, stream_ms, event_type, booking, actor_id, actor_name, actor_role, occur_time
  FROM booking_outbox WHERE seq IS NOT NULL AND publish_time IS NULL ORDER BY seq LIMIT $1
"""

MARK_PUBLISHED_SQL = """
UPDATE booking_outbox SET publish_time = now() WHERE publish_time IS NULL AND seq IS NOT NULL AND seq <= $1
"""

DELETE_PUBLISHED_SQL = "DELETE FROM booking_outbox WHERE publish_time < $1"

BACKLOG_SQL = "SELECT count(*) FROM booking_outbox WHERE publish_time IS NULL"


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    """A committed change with its place in the stream."""

    event_id: EventId
    action: AuditAction
    booking: Booking
    actor: Actor
    occur_time: datetime


def _event(record: Record) -> OutboxEvent:
    return OutboxEvent(
        event_id=EventId(record["stream_ms"], record["seq"]),
        action=AuditAction(record["event_type"]),
        booking=booking_from_json(json.loads(record["booking"])),
        actor=Actor(record["actor_id"], record["actor_name"], Role(record["actor_role"])),
        occur_time=record["occur_time"],
    )


class OutboxConnection:
    """The relay's own connection (not pooled: it holds a session lock and a LISTEN)."""

    def __init__(self, conn: asyncpg.Connection[Record], wake: asyncio.Event) -> None:
        self._conn = conn
        self._wake = wake
        self.locked = False

    @classmethod
    async def connect(cls, dsn: str, wake: asyncio.Event, *, limit_seconds: float = 10.0) -> OutboxConnection:
        conn: asyncpg.Connection[Record] = await asyncpg.connect(
            dsn,
            timeout=limit_seconds,
            command_timeout=limit_seconds,
            server_settings={"timezone": "UTC", "application_name": "booking_service relay"},
        )
        outbox = cls(conn, wake)
        try:
            await conn.add_listener(CHANNEL, outbox._notified)
        except BaseException:
            await conn.close()
            raise
        return outbox

    def _notified(self, *_: object) -> None:
        self._wake.set()

    def is_closed(self) -> bool:
        return self._conn.is_closed()

    async def close(self) -> None:
        if not self._conn.is_closed():
            await self._conn.close(timeout=5)

    async def try_lock(self) -> bool:
        """Become the relay if no other instance is; True if this connection holds the lock."""
        if not self.locked:
            self.locked = bool(await self._conn.fetchval("SELECT pg_try_advisory_lock($1)", RELAY_LOCK_ID))
        return self.locked

    async def assign(self, batch: int) -> int:
        """Give up to `batch` committed events their stream position; returns how many got one."""
        count: int = await self._conn.fetchval(ASSIGN_SQL, batch)
        return count

    async def unpublished(self, limit: int) -> list[OutboxEvent]:
        return [_event(r) for r in await self._conn.fetch(UNPUBLISHED_SQL, limit)]

    async def mark_published(self, up_to: EventId) -> None:
        await self._conn.execute(MARK_PUBLISHED_SQL, up_to.seq)

    async def delete_published(self, before: datetime) -> int:
        status = await self._conn.execute(DELETE_PUBLISHED_SQL, before)
        return int(status.split()[-1])

    async def backlog(self) -> int:
        count: int = await self._conn.fetchval(BACKLOG_SQL)
        return count
