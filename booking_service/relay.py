"""The outbox relay: publishes committed change events from PostgreSQL to the Redis stream. This module is the
loop that joins the PostgreSQL side (booking_service.outbox: placing, marks, seams) and the Redis side
(booking_service.publisher: the append script, StreamMoved), and the waker.

Woken after events commit (by `RelayWaker`), with a periodic sweep as a backstop, the relaying instance
(outbox.py) gives events their stream position, appends them to the stream with XADD under that explicit id,
and records durably how far it has published about once a second. A crash between XADD and that mark means
the events are published again under the same ids: the publisher skips what the stream already holds. It appends
only where it last left the stream (a script checks the stream's last id first), so a stream that lost its last
entries without the relay's connection failing (a failover to a replica that lacked them) is never appended to
after a gap: the relay reads where it ends and publishes the lost entries again, under the same ids.
While Redis is down, events wait in the outbox and go out in order once it is back; meanwhile the relay still
gives them their positions as they commit and tells notify instances (PLACED_CHANNEL), which read them from the
outbox until Redis is back (notify_service.fallback), under the same ids.

Erasure: a hard delete erases the booking's notes from its outbox rows in its own statement. Before the relay
appends that booking's HARD_DELETED event, it replaces the booking's earlier entries in the stream with the
redacted rows, in the same script (svc_common.eventstream explains how readers find them), so no reader of the
stream, from any cursor, gets the notes once the HARD_DELETED event can be read.

Housekeeping trims the stream by age (XTRIM MINID, exactly; XADD trims by count) and deletes published outbox
rows placed before the same id, so the outbox holds every event the stream holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import redis.asyncio as redis

from booking_service import metrics
from booking_service.database import LOST_CONNECTION, Database
from booking_service.outbox import ADOPT_MAX, CHANNEL, OutboxConnection
from booking_service.publisher import Entry, RedisPublisher
from svc_common import eventstream as stream
from svc_common.backoff import Backoff
from svc_common.eventstream import EventId
from svc_common.outbox import PlacedRow
from svc_common.postgres import Connector
from svc_common.redis_client import REDIS_ERRORS

log = logging.getLogger(__name__)

MARK_INTERVAL_SECONDS = 1.0  # how often the relay records durably how far it has published
BACKLOG_SAMPLE_SECONDS = 5.0  # how often the relay counts what waits in the outbox (metrics)
PROBE_MAX_SECONDS = 1.0  # while Redis cannot take events: how often, at most, to try a write


@dataclass(frozen=True)
class RelayConfig:
    stream_key: str = stream.DEFAULT_STREAM_KEY
    batch: int = 500
    sweep_seconds: float = 1.0  # backstop for a missed notification
    lock_retry_seconds: float = 2.0  # how often a standby instance tries to become the relay
    max_len: int = 1_000_000  # stream retention by count (approximate)
    max_age_seconds: float = 86_400.0  # stream and published-outbox retention by age
    housekeeping_seconds: float = 60.0
    max_backoff_seconds: float = 2.0
    seam_probe_seconds: float = 1.0  # on taking the relay: how long to wait for the stream's end before placing


def entry_of(row: PlacedRow) -> tuple[Entry, str | None]:
    """The stream entry of a placed outbox row, and the error if it cannot be read (svc_common.outbox: the same
    placeholder notify's fallback makes of it)."""
    fields, error = row.entry_fields()
    return (row.event_id, fields), error


def entries_of(rows: Sequence[PlacedRow]) -> tuple[list[Entry], list[tuple[int, str]]]:
    """The stream entries of placed outbox rows, and the (seq, error) of those that cannot be published, so one
    bad row never stops the events after it nor leaves a gap in the seqs."""
    entries: list[Entry] = []
    failures: list[tuple[int, str]] = []
    for row in rows:
        entry, error = entry_of(row)
        if error is not None:
            log.error("change event %s cannot be published (%s); set aside in booking_outbox_dead", row.event_id, error)
            failures.append((row.event_id.seq, error))
        entries.append(entry)
    return entries, failures


class Every:
    """Due once per `seconds`: `due()` says whether it is, and if so counts the next period from now."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._next = 0.0  # due at once

    def due(self) -> bool:
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self.seconds
        return True

    def restart(self) -> None:
        """Count the next period from now (done outside `due()`)."""
        self._next = time.monotonic() + self.seconds


class EventRelay:
    """Runs on every booking instance; relays while it holds the relay lock, stands by otherwise."""

    def __init__(self, config: RelayConfig, client: redis.Redis, connector: Connector) -> None:
        self._config = config
        self._connector = connector
        self._publisher = RedisPublisher(client, config.stream_key, config.max_len)
        self._wake = asyncio.Event()
        self._published = 0  # the last seq this relay published (marked in the database about once a second)
        self._mark = Every(MARK_INTERVAL_SECONDS)
        self._sample = Every(BACKLOG_SAMPLE_SECONDS)  # the backlog, for the metrics
        self._housekeeping_due = Every(config.housekeeping_seconds)
        self.relaying = False  # whether this instance holds the relay lock
        self.blocked = False  # whether it relays but Redis does not take its events (down, refusing, stalled)

    async def run(self) -> None:
        """Relay until cancelled; database trouble means reconnecting, never giving up. Anything else fails the
        task, which its supervisor logs and restarts."""
        backoff = Backoff(0.1, self._config.max_backoff_seconds)
        while True:
            try:
                outbox = await OutboxConnection.connect(self._connector, self._wake)
            except LOST_CONNECTION as exc:
                log.debug("relay cannot reach the database: %s", type(exc).__name__)
                await backoff.sleep()
                continue
            try:
                await self._serve(outbox)
            except LOST_CONNECTION as exc:
                log.warning("relay lost the database (%s); reconnecting", type(exc).__name__)
                outbox.drop()  # not closed politely: the server may be frozen, and that would wait on it
                backoff.reset()
            finally:
                self._published = 0  # marks are made on the connection that published; start afresh
                self.relaying = False
                await outbox.close()
            await backoff.sleep()

    def wake(self) -> None:
        self._wake.set()

    async def _serve(self, outbox: OutboxConnection) -> None:
        while True:  # stand by until this instance may relay
            if await outbox.try_lock():
                break
            await asyncio.sleep(self._config.lock_retry_seconds)
        self.relaying = True
        log.info("relaying change events to Redis stream %r", self._config.stream_key)
        # Before placing anything on this connection (perhaps to a primary that took over): a seam if the outbox
        # may lack positions already handed out. The stream's end, if Redis answers at once; else the timeline
        # alone now, and the stream's end once it can be read (_relay_all).
        self._publisher.forget_top()
        stream_top = None
        with contextlib.suppress(TimeoutError, *REDIS_ERRORS):
            async with asyncio.timeout(self._config.seam_probe_seconds):
                stream_top = await self._publisher.read_top_if_unknown()
        await self._reconcile(outbox, stream_top)
        while True:
            self._wake.clear()
            try:
                await self._relay_all(outbox)
                await self._housekeeping(outbox)
            except REDIS_ERRORS as exc:
                # Any error reply (OOM, READONLY, MISCONF), a timeout or a lost connection is "cannot publish",
                # as is a stream that moved (StreamMoved: the stream's end is read again before the next append):
                # events keep their places in the outbox, which notify follows meanwhile.
                self.blocked = True
                metrics.PUBLISH_BLOCKED.set(1)
                waiting, _ = await self._sample_backlog(outbox)
                log.warning("cannot publish to Redis (%s); %d events wait in the outbox", _describe(exc), waiting)
                await self._place_until_writable(outbox)
                continue
            if self.blocked:
                log.info("publishing to Redis again")
            self.blocked = False
            metrics.PUBLISH_BLOCKED.set(0)
            metrics.STREAM_BEHIND_OUTBOX.set(0)
            # asyncio.timeout, not wait_for: Python 3.11's wait_for can lose a cancellation that arrives as the
            # event is set. (redis-py can swallow one too; svc_common.supervisor.cancel_and_wait repeats it.)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._config.sweep_seconds):
                    await self._wake.wait()

    async def _place_until_writable(self, outbox: OutboxConnection) -> None:
        """Place events as they commit (and tell notify instances how far the outbox is ahead), so that readers of
        the outbox get them while Redis cannot take them, until a probe beside this finds Redis writable again.
        Placing never waits on a Redis call."""
        writable = asyncio.Event()
        probing = asyncio.create_task(self._probe_until_writable(writable))
        try:
            while not writable.is_set():
                self._wake.clear()
                newest = await outbox.place(self._config.batch, self._published)
                metrics.STREAM_BEHIND_OUTBOX.set(max(0, newest - self._published))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._config.sweep_seconds):
                        await _first(self._wake, writable)
        finally:
            probing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probing

    async def _probe_until_writable(self, writable: asyncio.Event) -> None:
        backoff = Backoff(0.05, PROBE_MAX_SECONDS)
        while True:
            await backoff.sleep()
            try:
                await self._publisher.probe()
            except Exception as exc:  # noqa: BLE001 - whatever fails (redis-py mid-failover too) means "not yet"
                log.debug("Redis still refuses writes: %s", _describe(exc))
                continue
            writable.set()
            return

    async def _sample_backlog(self, outbox: OutboxConnection) -> tuple[int, float]:
        waiting, oldest_age = await outbox.backlog(self._published)
        metrics.OUTBOX_BACKLOG.set(waiting)
        metrics.OUTBOX_OLDEST_AGE.set(oldest_age)
        self._sample.restart()
        return waiting, oldest_age

    async def _relay_all(self, outbox: OutboxConnection) -> None:
        if self._sample.due():
            await self._sample_backlog(outbox)
        top = await self._publisher.read_top_if_unknown()
        if top is not None:
            await self._reconcile(outbox, top)
        batch = self._config.batch
        while True:
            started = time.perf_counter()
            rows = await outbox.round(batch, self._published, mark=self._mark.due())
            if rows:
                entries, failures = entries_of(rows)
                if failures:
                    await outbox.set_aside(failures)
                await self._publisher.publish(entries, await self._erased(outbox, rows))
                metrics.EVENTS_PUBLISHED.inc(len(entries))
                metrics.events_published([(row.record["occur_time"], row.event_id.ms) for row in rows], time.time())
                # Marked published durably by a later round (about once a second): a crash before that only
                # means publishing them again, which the stream refuses.
                self._published = rows[-1].event_id.seq
            metrics.RELAY_ROUNDS.observe(time.perf_counter() - started)
            if len(rows) < batch:
                return

    async def _reconcile(self, outbox: OutboxConnection, top: EventId | None) -> None:
        """Square the outbox with the stream's end `top` (None: not known, Redis cannot be read) before placing
        or publishing from it."""

        async def published(after: EventId) -> dict[str, EventId]:
            assert top is not None
            try:
                return await self._publisher.changes_after(after, top, ADOPT_MAX)
            except REDIS_ERRORS as exc:
                log.warning("cannot read what the stream holds past the outbox (%s): none adopted", _describe(exc))
                return {}

        seam = await outbox.seam(top, published)
        if seam is not None:
            # The primary lacks events already handed out (published, or read by notify from the old primary's
            # outbox while Redis could not take them): numbering on from its own newest position would give new
            # events positions readers have seen, and they would pass over them.
            log.warning(
                "placed a seam at %s (%s); the positions before it are never handed out again; %d committed "
                "events took the positions the stream already had them at",
                seam.at,
                seam.reason,
                seam.adopted,
            )
            metrics.SEAMS.inc()
        if top is None or top.seq == 0:
            return
        # After a fault: Redis may have come back without the last events it took (a failover to a replica that
        # lacked them). Publish again from the stream's end, under the same ids (a stream that came back empty
        # starts afresh from the durable mark instead: notify tells cursors into the lost part OUT_OF_RANGE).
        mark = await outbox.rewind(top.seq)
        if max(mark, self._published) > top.seq:
            log.warning(
                "Redis stream %r ends at %s, before the published mark %d (a failover lost acknowledged "
                "writes): publishing again from there",
                self._config.stream_key,
                top,
                max(mark, self._published),
            )
            metrics.REPUBLISHED_AFTER_LOSS.inc(max(mark, self._published) - top.seq)
        self._published = min(self._published, top.seq)

    @staticmethod
    async def _erased(outbox: OutboxConnection, rows: Sequence[PlacedRow]) -> list[Entry]:
        """The redacted entries of the bookings whose HARD_DELETED events are among `rows` (none: no query)."""
        erasing = [row for row in rows if row.erases]
        if not erasing:
            return []
        earlier = await outbox.erased([row.record["booking_id"] for row in erasing], erasing[-1].event_id.seq)
        return [entry_of(row)[0] for row in earlier]

    async def _housekeeping(self, outbox: OutboxConnection) -> None:
        if not self._housekeeping_due.due():
            return
        cutoff = datetime.now(UTC) - timedelta(seconds=self._config.max_age_seconds)
        cutoff_ms = int(cutoff.timestamp() * 1000)
        await self._publisher.trim_older_than(cutoff_ms)
        removed = await outbox.delete_published(cutoff_ms)
        if removed:
            log.info("removed %d published events older than %s from the outbox", removed, cutoff)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def _first(*events: asyncio.Event) -> None:
    """Until one of `events` is set."""
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


class RelayWaker:
    """Wakes the relay after changes commit: directly when this instance relays, else through PostgreSQL
    (NOTIFY on a pooled connection, which the relaying instance LISTENs to).

    The notification is sent after the write committed, not by the write: a NOTIFY inside the write
    transaction would serialise every commit on PostgreSQL's notification queue lock (measured: half the
    write throughput). Wake-ups coalesce, so a burst of writes costs one notification per round trip.
    """

    def __init__(self, relay: EventRelay, db: Database) -> None:
        self._relay = relay
        self._db = db
        self._dirty = asyncio.Event()

    def committed(self) -> None:
        self._dirty.set()

    async def run(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            if self._relay.relaying:
                self._relay.wake()
            else:
                await self._db.notify(CHANNEL)
