"""Events from PostgreSQL while Redis cannot be read: the outbox is the log, Redis its fan-out accelerator.

booking_service's relay gives every committed event its stream position in the outbox (`seq`, `stream_ms`)
whether or not Redis takes them, and while it cannot publish it notifies PLACED_CHANNEL as it places them. A
notify process that cannot read the stream, or whose stream has fallen behind the outbox (notify_service.lag),
for REDIS_FALLBACK_AFTER_SECONDS follows the outbox instead, on one connection (one reader per process, not per
subscriber, kept open throughout to hear those notifications), woken by them with a short sweep as a backstop,
and feeds the hub the very events Redis would have carried: same ids, same bytes, same order. It goes back to
the stream, at its exact position, once Redis answers and holds the events up to it (see notify_service.source).

The outbox belongs to booking_service; this module reads it through its read side's contract
(svc_common.outbox: the SQL, the placed row and its encoding), as the relay does, so both paths make the same
entries. Nothing here comes from booking_service. The role needs SELECT on booking_outbox and its state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Protocol

import asyncpg

from notify_service.entries import decode
from notify_service.hub import Event
from svc_common.backoff import Backoff
from svc_common.eventstream import EventId
from svc_common.outbox import AFTER_SQL, AT_SQL, PLACED_CHANNEL, PUBLISHED_SQL, TOP_SQL, PlacedRow
from svc_common.postgres import Connector

log = logging.getLogger(__name__)

CONNECT_SECONDS = 5.0
MAX_RECONNECT_SECONDS = 5.0
CHECK_OPEN_SECONDS = 1.0  # how often `run` looks whether the connection is still open
# What a lost or refused connection looks like (asyncpg's own errors, and the socket's).
DATABASE_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


class OutboxUnavailable(Exception):
    """PostgreSQL cannot be read."""


class Outbox(Protocol):
    """The outbox in PostgreSQL, as the source switch (notify_service.source) and history reads use it while Redis
    cannot be read; OutboxReader is the one implementation."""

    @property
    def is_open(self) -> bool: ...
    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def after(self, position: EventId | None, count: int) -> list[Event]: ...
    async def holds(self, event_id: EventId) -> bool: ...
    async def top(self) -> EventId | None: ...
    async def published(self) -> EventId | None: ...
    async def wait(self, seconds: float) -> None: ...


def _event(row: PlacedRow) -> Event | None:
    fields, _ = row.entry_fields()  # the relay sets a row that cannot be encoded aside; its place is passed over
    return decode(str(row.event_id).encode(), fields)


class OutboxReader:
    """One connection to the outbox: reads placed events and hears the relay's notifications. It is kept open
    (`run`) even while events come from Redis, so that this process learns when the stream falls behind the
    outbox (`on_placed`; notify_service.lag)."""

    def __init__(self, connector: Connector, on_placed: Callable[[str], None] | None = None) -> None:
        self._connector = connector
        self._conn: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()  # the follower and history reads share the connection
        self._placed = asyncio.Event()
        self._on_placed = on_placed

    @property
    def is_open(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    async def run(self) -> None:
        """Keep the connection open, reconnecting with backoff, until cancelled (then close it)."""
        backoff = Backoff(0.1, MAX_RECONNECT_SECONDS)
        try:
            while True:
                if not self.is_open:
                    try:
                        await self.open()
                    except OutboxUnavailable as exc:
                        log.debug("cannot reach the outbox in PostgreSQL (%s)", exc)
                        await backoff.sleep()
                        continue
                    backoff.reset()
                await asyncio.sleep(CHECK_OPEN_SECONDS)
        finally:
            await self.close()

    async def open(self) -> None:
        """Connect (a no-op while connected); OutboxUnavailable if PostgreSQL cannot be reached."""
        if self.is_open:
            return
        try:
            self._conn = await self._connector.listening(
                PLACED_CHANNEL,
                self._notified,
                command_timeout=CONNECT_SECONDS,
                server_settings={"application_name": "notify_service outbox reader"},
            )
        except DATABASE_ERRORS as exc:
            raise OutboxUnavailable(f"{type(exc).__name__}: {exc}") from exc

    def _notified(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        self._placed.set()
        if self._on_placed is not None and isinstance(payload, str):
            self._on_placed(payload)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None or conn.is_closed():
            return
        try:
            await conn.close(timeout=CONNECT_SECONDS)
        except DATABASE_ERRORS:
            conn.terminate()
        except BaseException:
            conn.terminate()
            raise

    async def _query(self, method: str, *args: object) -> Any:
        """Run one query on the connection (one at a time), as OutboxUnavailable if the database is lost."""
        async with self._lock:
            if self._conn is None or self._conn.is_closed():
                raise OutboxUnavailable("the outbox reader is closed")
            try:
                return await getattr(self._conn, method)(*args)
            except DATABASE_ERRORS as exc:
                raise OutboxUnavailable(f"{type(exc).__name__}: {exc}") from exc

    async def after(self, position: EventId | None, count: int) -> list[Event]:
        """Up to `count` placed events after `position` (None: after the start), oldest first."""
        records = await self._query("fetch", AFTER_SQL, position.seq if position else 0, count)
        rows = [PlacedRow.of(r) for r in records]
        return [event for row in rows if (event := _event(row)) is not None]

    async def holds(self, event_id: EventId) -> bool:
        return bool(await self._query("fetchval", AT_SQL, event_id.seq, event_id.ms))

    async def top(self) -> EventId | None:
        """The newest position handed out (None: none yet)."""
        record = await self._query("fetchrow", TOP_SQL)
        if record is None or not record["seq"]:
            return None
        return EventId(record["stream_ms"], record["seq"])

    async def published(self) -> EventId | None:
        """The newest position the relay has published to the stream (None: none, or no longer in the outbox,
        which then holds only what was never published)."""
        record = await self._query("fetchrow", PUBLISHED_SQL)
        return EventId(record["stream_ms"], record["seq"]) if record is not None else None

    async def wait(self, seconds: float) -> None:
        """Until the relay places events, or `seconds` pass."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._placed.wait()
        self._placed.clear()
