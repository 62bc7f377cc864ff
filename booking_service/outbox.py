"""The PostgreSQL side of the outbox relay: one dedicated connection that holds the relay lock, listens for
wake-ups (CHANNEL, sent by other instances after their writes commit) and runs the relay's SQL.

Write statements insert their change event into `booking_outbox` (see storage.py). The relay then, on this
connection, in one statement per round (one round trip on the event path):
1. marks published, about once a second, what earlier rounds published (relay.py);
2. gives committed events their stream position (`seq`, gapless, in outbox id order; `stream_ms`, never going
   back). Changes of one booking are serialised by its row lock and take their outbox id after that lock, so
   id order, hence seq order, is their commit order;
3. returns the events that have a position but are not published yet, in seq order, for publishing.

Before it places anything on a connection, the relay checks that positions it would hand out were never handed
out before (`seam`): after a failover to a standby that lacked the last transactions, or a stream that is ahead
of the outbox for any other reason, it places a seam past them first (svc_common.eventstream: seams).

Only the instance holding the session advisory lock RELAY_LOCK_ID relays, so one relay hands out positions at a
time; if its connection dies, the lock goes with it and another instance takes over. A relay that lost its lock
can at worst publish events again, under the same ids, which Redis refuses (stream ids only increase).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import asyncpg

from booking_service.rows import Record
from svc_common.eventstream import SEAM_GAP, EventId
from svc_common.outbox import EVENT_COLUMNS, PLACED_CHANNEL, SEAM, TOP, PlacedRow, change_key
from svc_common.postgres import Connector

RELAY_LOCK_ID = 0x6B6F6F63  # pg_advisory_lock key: held by the one relaying instance
CHANNEL = "booking_outbox"
CLOSE_SECONDS = 2.0  # closing the connection politely; past it, it is dropped
# The most a relay statement may take: a round of a few hundred events takes milliseconds, so this is about a
# primary that stopped answering. Housekeeping (deleting a day's published events, counting a backlog) may take
# longer.
STATEMENT_SECONDS = 3.0
HOUSEKEEPING_SECONDS = 60.0

# The CTEs that give up to $1 committed events their positions, following on from the newest one (only one
# relay runs at a time: RELAY_LOCK_ID); `assigned` holds the rows placed.
_PLACING = f"""top AS ({TOP}
), next_place AS (
    SELECT seq, greatest(stream_ms, (extract(epoch FROM clock_timestamp()) * 1000)::bigint) AS ms FROM top
), pending AS (
    SELECT id, row_number() OVER (ORDER BY id) AS n
      FROM (SELECT id FROM booking_outbox WHERE seq IS NULL ORDER BY id LIMIT $1) first_ones
), assigned AS (
    UPDATE booking_outbox o SET seq = next_place.seq + pending.n, stream_ms = next_place.ms
      FROM pending, next_place WHERE o.id = pending.id
    RETURNING o.*
)"""

# $1: batch size; $2: the published seq to mark durably now (0: none this round); $3: the last seq this relay
# published.
ROUND_SQL = f"""
WITH marked AS (
    UPDATE booking_outbox_state SET published_seq = $2 WHERE $2 > published_seq
), {_PLACING}
SELECT * FROM (
    SELECT {EVENT_COLUMNS} FROM assigned
    UNION ALL  -- placed earlier but not published yet; the statement's snapshot shows the rows `assigned`
               -- changes without their seq, so nothing comes twice
    SELECT {EVENT_COLUMNS} FROM booking_outbox
     WHERE seq > greatest($3, (SELECT published_seq FROM booking_outbox_state))
) unpublished ORDER BY seq LIMIT $1
"""

# $1: batch size; $2: the channel to notify; $3: the last seq this relay published. Places committed events
# without reading anything back and, while anything placed is not published, tells whoever listens how far the
# outbox is ahead: "<newest seq> <ms of the oldest one not published>" (the notification goes out at commit).
PLACE_SQL = f"""
WITH {_PLACING}, newest AS (
    SELECT greatest((SELECT max(seq) FROM assigned), (SELECT seq FROM top)) AS seq
), first_unpublished AS (
    SELECT greatest($3, (SELECT published_seq FROM booking_outbox_state)) + 1 AS seq
), oldest AS (
    SELECT stream_ms FROM assigned WHERE seq = (SELECT seq FROM first_unpublished)
    UNION ALL
    SELECT stream_ms FROM booking_outbox WHERE seq = (SELECT seq FROM first_unpublished)
)
SELECT (SELECT count(*) FROM assigned) AS placed, newest.seq AS newest,
       pg_notify($2, newest.seq || ' ' || coalesce((SELECT stream_ms FROM oldest LIMIT 1), 0))
  FROM newest WHERE newest.seq >= (SELECT seq FROM first_unpublished)
"""

# $1: the last seq the stream holds. Lowers the durable published mark to it (a primary that took over lacks
# what came after); returns the mark as it was.
REWIND_SQL = """
WITH old AS (SELECT published_seq FROM booking_outbox_state),
lowered AS (UPDATE booking_outbox_state SET published_seq = $1 WHERE published_seq > $1)
SELECT published_seq FROM old
"""

# Published events older than the stream's retention ($1: the cutoff, in the ms of their stream ids) are of no
# more use; the newest position is kept first. The stream is trimmed at the same ids (relay.py), so every event
# the stream still holds is still here, to be erased from it on a hard delete.
DELETE_PUBLISHED_SQL = f"""
WITH top AS ({TOP}
), kept AS (
    UPDATE booking_outbox_state s SET last_seq = top.seq, last_ms = top.stream_ms FROM top WHERE top.seq > s.last_seq
)
DELETE FROM booking_outbox
 WHERE seq <= (SELECT published_seq FROM booking_outbox_state) AND stream_ms < $1
"""

# The placed events of the bookings $1 (ids) before seq $2: what HARD_DELETED events erase from the stream (their
# notes are already erased here, by the hard delete's own statement).
ERASED_SQL = f"""
SELECT {EVENT_COLUMNS} FROM booking_outbox WHERE booking->>'id' = ANY($1::text[]) AND seq < $2 ORDER BY seq
"""

# Where the relay stands before it places anything: the newest position handed out, the timeline it last placed
# on, the server's timeline now (the first 8 hex digits of the current WAL file's name) and its clock.
STANDING_SQL = f"""
SELECT top.seq, top.stream_ms, state.timeline AS recorded,
       ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint AS timeline,
       (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS now_ms
  FROM ({TOP}) top, booking_outbox_state state
"""

# $1: the seam's description (JSON), $2 its seq, $3 its ms.
SEAM_SQL = f"""
INSERT INTO booking_outbox (event_type, booking, actor_id, actor_name, actor_role, seq, stream_ms)
VALUES ('{SEAM}', $1::jsonb, 'relay', 'booking_service relay', 'admin', $2, $3)
"""

RECORD_TIMELINE_SQL = "UPDATE booking_outbox_state SET timeline = $1 WHERE timeline IS DISTINCT FROM $1"

# Committed events without a position, oldest first ($1: how many), with what tells their changes apart.
UNPLACED_SQL = """
SELECT id, event_type, booking->>'id' AS booking_id, booking->>'version' AS version
  FROM booking_outbox WHERE seq IS NULL ORDER BY id LIMIT $1
"""

# $1: outbox ids, $2: their seqs, $3: their ms: positions given as they are in the stream already.
ADOPT_SQL = """
UPDATE booking_outbox o SET seq = a.seq, stream_ms = a.ms
  FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS a (id, seq, ms) WHERE o.id = a.id
"""
ADOPT_MAX = 100_000  # events looked at for adoption after a failover (more than any lost placing can leave)

SET_ASIDE_SQL = """
INSERT INTO booking_outbox_dead (seq, stream_ms, outbox_id, event_type, booking, actor_id, actor_name, actor_role,
                                 occur_time, traceparent, error)
SELECT o.seq, o.stream_ms, o.id, o.event_type, o.booking, o.actor_id, o.actor_name, o.actor_role, o.occur_time,
       o.traceparent, failed.error
  FROM booking_outbox o JOIN unnest($1::bigint[], $2::text[]) AS failed (seq, error) ON o.seq = failed.seq
ON CONFLICT (seq) DO NOTHING
"""

# $1: the last seq this relay published (it marks it durably only about once a second).
BACKLOG_SQL = """
SELECT count(*) AS waiting, coalesce(extract(epoch FROM now() - min(occur_time)), 0)::float8 AS oldest_age
  FROM booking_outbox WHERE seq IS NULL OR seq > greatest($1, (SELECT published_seq FROM booking_outbox_state))
"""


def seam_reason(placed: EventId, stream_top: EventId | None, recorded: int | None, timeline: int) -> str | None:
    """Why positions after `placed` (the newest the outbox handed out) may have been handed out before, or None:
    the stream (whose last id is `stream_top`, None: not known) is ahead of the outbox, or the database is on
    another timeline than the one events were last placed on (`recorded`, None: never recorded)."""
    if stream_top is not None and (stream_top.seq > placed.seq or stream_top.ms > placed.ms):
        return f"the stream ends at {stream_top}, past the outbox's newest position {placed}"
    if recorded is not None and recorded != timeline:
        return f"PostgreSQL is on timeline {timeline}, not {recorded} where events were last placed (a promotion)"
    return None


@dataclass(frozen=True)
class Seam:
    """A seam placed (svc_common.eventstream: seams): where, why, and how many events without a position took
    the ones the stream already had them at."""

    at: EventId
    reason: str
    adopted: int


class OutboxConnection:
    """The relay's own connection (not pooled: it holds a session lock and a LISTEN)."""

    def __init__(self, conn: asyncpg.Connection[Record]) -> None:
        self._conn = conn
        self.locked = False

    @classmethod
    async def connect(
        cls, connector: Connector, wake: asyncio.Event, *, limit_seconds: float = STATEMENT_SECONDS
    ) -> OutboxConnection:
        """The relay's connection, to the host `connector` finds (each host within its connect timeout);
        `limit_seconds` bounds each statement but housekeeping's: a primary that hangs (a frozen host) is
        left that soon, and the relay reconnects to whichever host takes writes."""
        conn: asyncpg.Connection[Record] = await connector.listening(
            CHANNEL,
            lambda *_: wake.set(),  # a wake-up is all a notification means
            command_timeout=limit_seconds,
            server_settings={"timezone": "UTC", "application_name": "booking_service relay"},
        )
        return cls(conn)

    async def close(self) -> None:
        """Close politely, or drop the connection if that does not finish within CLOSE_SECONDS (or is cancelled)."""
        if self._conn.is_closed():
            return
        try:
            await self._conn.close(timeout=CLOSE_SECONDS)
        except BaseException:
            self._conn.terminate()
            raise

    def drop(self) -> None:
        """Close the connection at once, without a word to the server."""
        self._conn.terminate()

    async def try_lock(self) -> bool:
        """Become the relay if no other instance is; True if this connection holds the lock."""
        if not self.locked:
            self.locked = bool(await self._conn.fetchval("SELECT pg_try_advisory_lock($1)", RELAY_LOCK_ID))
        return self.locked

    async def round(self, batch: int, published: int, *, mark: bool) -> list[PlacedRow]:
        """Place newly committed events and return up to `batch` events after seq `published` to publish next,
        in stream order (one statement); with `mark`, first record durably that `published` is published."""
        records = await self._conn.fetch(ROUND_SQL, batch, published if mark else 0, published)
        return [PlacedRow.of(r) for r in records]

    async def place(self, batch: int, published: int) -> int:
        """Give up to `batch` committed events their positions without publishing them (Redis cannot take them)
        and, while anything placed after seq `published` waits, notify PLACED_CHANNEL; returns the newest seq
        placed (0: nothing waits)."""
        record = await self._conn.fetchrow(PLACE_SQL, batch, PLACED_CHANNEL, published)
        return int(record["newest"]) if record is not None else 0

    async def rewind(self, seq: int) -> int:
        """Lower the durable published mark to `seq` if it is above; returns the mark as it was."""
        mark: int = await self._conn.fetchval(REWIND_SQL, seq)
        return mark

    async def seam(
        self, stream_top: EventId | None, published: Callable[[EventId], Awaitable[Mapping[str, EventId]]]
    ) -> Seam | None:
        """Place a seam past every position that may have been handed out before (see `seam_reason`), and record
        the timeline; None if no seam was needed. When the stream is ahead, the committed events without a
        position whose changes it holds after the outbox's newest position (`published(position)`: by change
        key) take the positions they have there, instead of being placed, hence delivered, a second time."""
        async with self._conn.transaction():
            standing = await self._conn.fetchrow(STANDING_SQL)
            assert standing is not None
            placed = EventId(standing["stream_ms"], standing["seq"])
            reason = seam_reason(placed, stream_top, standing["recorded"], standing["timeline"])
            made = None
            if reason is not None:
                adopted = await self._adopt(await published(placed)) if stream_top and stream_top > placed else 0
                top = stream_top or placed
                at = EventId(max(placed.ms, top.ms, standing["now_ms"]), max(placed.seq, top.seq) + SEAM_GAP)
                about = json.dumps({"after": str(max(placed, top)), "reason": reason})
                await self._conn.execute(SEAM_SQL, about, at.seq, at.ms)
                made = Seam(at, reason, adopted)
            await self._conn.execute(RECORD_TIMELINE_SQL, standing["timeline"])
        return made

    async def _adopt(self, published: Mapping[str, EventId]) -> int:
        """Give the committed events without a position whose changes are in `published` those positions;
        returns how many."""
        if not published:
            return 0
        ids, seqs, mss = [], [], []
        for row in await self._conn.fetch(UNPLACED_SQL, ADOPT_MAX):
            at = published.get(change_key(row["event_type"], row["booking_id"], row["version"]))
            if at is not None:
                ids.append(row["id"])
                seqs.append(at.seq)
                mss.append(at.ms)
        if ids:
            await self._conn.execute(ADOPT_SQL, ids, seqs, mss)
        return len(ids)

    async def set_aside(self, failures: Sequence[tuple[int, str]]) -> None:
        """Copy the events at these seqs into the dead-letter table with their errors (idempotent)."""
        seqs, reasons = [seq for seq, _ in failures], [reason for _, reason in failures]
        await self._conn.execute(SET_ASIDE_SQL, seqs, reasons)

    async def delete_published(self, before_ms: int) -> int:
        """Delete published events placed before `before_ms` (stream id ms); returns how many."""
        status = await self._conn.execute(DELETE_PUBLISHED_SQL, before_ms, timeout=HOUSEKEEPING_SECONDS)
        return int(status.split()[-1])

    async def erased(self, booking_ids: Sequence[str], before: int) -> list[PlacedRow]:
        """The placed events of `booking_ids` before seq `before`, in stream order (as erased: without notes)."""
        records = await self._conn.fetch(ERASED_SQL, list(booking_ids), before)
        return [PlacedRow.of(r) for r in records]

    async def backlog(self, published: int) -> tuple[int, float]:
        """How many committed events are not published yet (after seq `published`), and the oldest one's age."""
        record = await self._conn.fetchrow(BACKLOG_SQL, published, timeout=HOUSEKEEPING_SECONDS)
        assert record is not None
        return record["waiting"], record["oldest_age"]
