"""The Redis side: one reader per instance that follows the event stream and feeds the hub, and history reads
for subscribers that resume.

History reads are shared (notify_service.history): subscribers that need the same range at the same time wait
for one XRANGE, the last few full ranges read are kept in memory, reads end on multiples of their size in seq
(so subscribers that started from different cursors go on to read the same ranges), and only a few run at once,
so a crowd resuming at once costs Redis a bounded number of reads. Subscribers resuming from a recent cursor
need none: the hub remembers recent events (see notify_service.hub).

Redis trouble never ends a subscription: the reader reconnects and continues from the last id it dispatched, and
history reads wait for Redis to come back, so subscribers see a delay, not a gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import redis.asyncio as redis
from google.protobuf.message import DecodeError

from booking_api.booking.v1 import events_pb2
from booking_api.notify.v1 import notify_pb2
from notify_service import metrics
from notify_service.history import SharedReads
from notify_service.hub import DEFAULT_WINDOW, Event, Hub
from notify_service.lag import OutboxLag
from svc_common import eventstream as stream
from svc_common.backoff import Backoff
from svc_common.eventstream import ORIGIN, EventId
from svc_common.redis_client import REDIS_ERRORS

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_BACKOFF_SECONDS = 1.0
OUTBOX_SWEEP_SECONDS = 0.25  # following the outbox: how long to wait for the relay's notification at most
PROBE_SECONDS = 0.5  # following the outbox: how often to ask whether Redis is back
HISTORY_READS_AT_ONCE = 4  # history XRANGEs in flight per process; the rest queue behind them


def decode(entry_id: bytes, fields: dict[bytes, bytes]) -> Event | None:
    """The event of one stream entry: a place holder (no payload) for an event the relay set aside, None for an
    entry that is not one of ours, which is skipped (had it taken the place of one of ours, subscribers see the
    gap in the seqs and are told)."""
    event_id = EventId.parse(entry_id)
    if event_id is None:
        log.error("stream entry %r is not a change event; skipped", entry_id)
        return None
    raw = fields.get(stream.FIELD_EVENT)
    if raw is None:
        if stream.FIELD_SEAM in fields:
            return Event(id=event_id, customer_id="", provider_id="", booking_id="", payload=None, seam=True)
        if stream.FIELD_SKIPPED in fields:
            log.warning("change event %s was set aside by the relay; passed over", event_id)
            return Event(id=event_id, customer_id="", provider_id="", booking_id="", payload=None)
        log.error("stream entry %r is not a change event; skipped", entry_id)
        return None
    try:
        event = events_pb2.BookingEvent.FromString(raw)
    except DecodeError:
        log.error("stream entry %r does not hold a BookingEvent; skipped", entry_id)
        return None
    # A response of this one event; responses of several are the concatenation of theirs (protobuf appends
    # repeated fields), so each event is serialized once however many subscribers and batches carry it.
    response = notify_pb2.SubscribeResponse(events=[event])
    return Event(
        id=event_id,
        customer_id=fields.get(stream.FIELD_CUSTOMER, b"").decode(),
        provider_id=fields.get(stream.FIELD_PROVIDER, b"").decode(),
        booking_id=fields.get(stream.FIELD_BOOKING, b"").decode(),
        payload=response.SerializeToString(),
        erases=event.type == events_pb2.BOOKING_EVENT_TYPE_HARD_DELETED,
    )


def _events(entries: list[tuple[bytes, dict[bytes, bytes]]]) -> list[Event]:
    return [event for entry_id, fields in entries if (event := decode(entry_id, fields)) is not None]


def _missing(previous: EventId | None, events: list[Event]) -> bool:
    """Whether seqs are missing between `previous` (None: anywhere before the first) and the events, or among them."""
    expected = previous.seq + 1 if previous is not None else None
    for event in events:
        if expected is not None and event.id.seq > expected and not event.seam:
            return True
        expected = event.id.seq + 1
    return False


def _range(position: EventId, count: int, events: list[Event]) -> list[Event]:
    """The events of a history read after `position` up to seq `position.seq + count` (erased ones put back may
    reach further), or up to a seam: the next read starts from it."""
    kept: list[Event] = []
    for event in events:
        if event.seam:
            if not kept:
                kept.append(event)
            break
        if event.id.seq > position.seq + count:
            break
        kept.append(event)
    return kept


def _unpacked(member: bytes) -> Event | None:
    try:
        entry_id, fields = stream.unpack_entry(member)
    except ValueError:
        log.error("erased copy %r is not a stream entry; skipped", member[:40])
        return None
    return decode(entry_id, fields)


def _ignore_outcome(task: asyncio.Future[Any]) -> None:
    """Retrieve an abandoned read's outcome (asyncio would log one never retrieved)."""
    if not task.cancelled():
        task.exception()


class OutboxUnavailable(Exception):
    """PostgreSQL cannot be read (notify_service.fallback)."""


class Outbox(Protocol):
    """The outbox in PostgreSQL, read while Redis cannot be (notify_service.fallback.OutboxReader)."""

    @property
    def is_open(self) -> bool: ...
    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def after(self, position: EventId | None, count: int) -> list[Event]: ...
    async def holds(self, event_id: EventId) -> bool: ...
    async def top(self) -> EventId | None: ...
    async def wait(self, seconds: float) -> None: ...


class StreamReader:
    def __init__(
        self,
        client: redis.Redis,
        key: str,
        hub: Hub,
        *,
        batch: int = 500,
        block_ms: int = 1000,
        window: int = DEFAULT_WINDOW,
        history_batch: int = 1000,
        outbox: Outbox | None = None,
        fallback_after: float = 2.0,
        blocking: redis.Redis | None = None,
        lag: OutboxLag | None = None,
    ) -> None:
        self._redis = client
        # For the blocking XREAD: a client whose calls may take the block time on top of the timeout.
        self._blocking = blocking or client
        self.lag = lag or OutboxLag(fallback_after)
        self._key = key
        self._erased_key = stream.erased_key(key)
        self._hub = hub
        self._batch = batch
        self._block_ms = block_ms
        self._window = window  # recent events loaded into the hub at start
        self.history_batch = history_batch
        self.history = SharedReads(HISTORY_READS_AT_ONCE)
        self._outbox = outbox
        self._fallback_after = fallback_after
        self.path = "redis"  # where events come from now: "redis", or "postgres" while Redis cannot be read
        # While following the outbox: history from the outbox only from here on (the oldest event this process
        # had seen when Redis went away); older history is Redis's to serve, under Redis's retention.
        self._outbox_floor: EventId | None = None
        self.connected = False
        self._reported = (False, "redis")
        # Told whether events can be read and from where ("redis" or "postgres") whenever either changes.
        self.on_change: Callable[[bool, str], Awaitable[None]] | None = None

    async def _set_connected(self, connected: bool) -> None:
        if connected != self.connected:
            self.connected = connected
            if connected and self.path == "redis":
                log.info("reading event stream %r", self._key)
            elif not connected:
                log.warning("cannot read event stream %r; reconnecting", self._key)
        if (connected, self.path) != self._reported:
            self._reported = (connected, self.path)
            if self.on_change is not None:
                await self.on_change(connected, self.path)

    async def lost(self) -> None:
        """The reading task failed (its supervisor restarts it): subscribers wait meanwhile."""
        await self._set_connected(False)

    async def run(self) -> None:
        """Follow the stream from its current end, dispatching to the hub, until cancelled. While Redis cannot be
        read, or its stream has fallen behind the outbox (notify_service.lag), for `fallback_after` seconds,
        follow the outbox instead (when there is one), counting from the first failed call."""
        position: bytes | None = None  # the last entry read (ours or not); None: not positioned yet
        if self._hub.positioned.is_set():  # restarted after a failure: go on from what was dispatched last
            position = str(self._hub.last).encode() if self._hub.last is not None else b"0-0"
        backoff = Backoff(0.05, MAX_BACKOFF_SECONDS)
        unreadable_since: float | None = None
        while True:
            behind = self.lag.behind.is_set()
            if behind or (unreadable_since is not None and time.monotonic() - unreadable_since >= self._fallback_after):
                if self._outbox is not None:
                    since = self.lag.since if behind and self.lag.since is not None else unreadable_since
                    if await self._follow_outbox(time.monotonic() - (since or 0.0), behind=behind):
                        # Back to the stream exactly where the outbox left off.
                        position = str(self._hub.last).encode() if self._hub.last is not None else None
                        unreadable_since = None
                        backoff.reset()
                        continue
                    self.lag.reset()
                    await backoff.sleep()  # PostgreSQL cannot be read either: wait, then try Redis again
                else:
                    self.lag.reset()  # no outbox to follow: wait for Redis
            started = time.monotonic()
            try:
                if position is None:
                    newest: Any = await self._redis.xrevrange(self._key, count=max(self._window, 1))
                    # An empty stream: read from its start, and take whatever event comes first.
                    recent = await self._complete(None, newest[::-1])
                    self._hub.start_at(EventId.parse(newest[0][0]) if newest else None, recent)
                    position = newest[0][0] if newest else b"0-0"
                    await self._set_connected(True)
                reply = await self._read_unless_behind(position)
                if reply is None:
                    continue  # fell behind the outbox while waiting
                read = [await self._complete(EventId.parse(position), entries) for _key, entries in reply]
                # Readable once a read succeeded (not before each attempt: that flapped during an outage).
                await self._set_connected(True)
                backoff.reset()
                unreadable_since = None
            except REDIS_ERRORS:
                await self._set_connected(False)
                unreadable_since = unreadable_since or started  # the fallback timer starts at the failed call
                if self._outbox is None or time.monotonic() - unreadable_since < self._fallback_after:
                    await self._sleep_unless_behind(backoff.next())
                continue
            for (_key, entries), events in zip(reply, read, strict=True):
                position = entries[-1][0]
                self._dispatch(events)
                newest = EventId.parse(position)
                if newest is not None:
                    metrics.READ_LAG.set(max(0.0, time.time() - newest.ms / 1000))

    async def _read_unless_behind(self, position: bytes) -> list[Any] | None:
        """XREAD from `position` (blocking up to the block time); None if the stream fell behind the outbox for
        the fallback delay meanwhile. The read then is abandoned, not awaited: redis-py may swallow a cancellation
        and finish its blocking read first, and nothing may wait on a stalled Redis."""
        if self.lag.behind.is_set():
            return None
        read = asyncio.ensure_future(
            self._blocking.xread({self._key: position}, count=self._batch, block=self._block_ms)
        )
        behind = asyncio.ensure_future(self.lag.behind.wait())
        try:
            await asyncio.wait((read, behind), return_when=asyncio.FIRST_COMPLETED)
        finally:
            behind.cancel()
            if not read.done():
                read.cancel()
                read.add_done_callback(_ignore_outcome)  # it ends by itself within the block time and timeout
        if not read.done() or read.cancelled():
            return None
        reply: Any = read.result()  # raises what the read raised (REDIS_ERRORS)
        return list(reply or ())

    async def _sleep_unless_behind(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self.lag.behind.wait()

    def _dispatch(self, events: list[Event]) -> None:
        for event in events:
            if event.seam:
                log.warning(
                    "passed a seam at %s: the stream's positions jump there on purpose (a PostgreSQL failover lost "
                    "events already handed out; the relay logged why)",
                    event.id,
                )
                metrics.SEAMS_PASSED.inc()
        read_at = time.monotonic()
        metrics.events_read(events, self.path, time.time())
        self._hub.dispatch(events, read_at, self.path)
        if events:
            self.lag.dispatched(events[-1].id.seq)
        if any(event.erases for event in events):
            self.history.forget()  # kept ranges may hold notes the hub has just erased

    async def _complete(self, previous: EventId | None, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> list[Event]:
        """The events of `entries`, read after `previous`, with the erased ones that are missing among them put
        back from the erased set (one more call, only when seqs are missing)."""
        events = _events(entries)
        if not events or not _missing(previous, events):
            return events
        low = previous.seq if previous is not None else events[0].id.seq
        members: Any = await self._redis.zrangebyscore(self._erased_key, f"({low}", f"({events[-1].id.seq}")
        have = {event.id.seq for event in events}
        copies = [event for member in members if (event := _unpacked(member)) is not None and event.id.seq not in have]
        return sorted([*events, *copies], key=lambda event: event.id) if copies else events

    async def _follow_outbox(self, waited: float, *, behind: bool) -> bool:
        """Feed the hub from the outbox until the stream holds the events up to the hub's position again; False
        if PostgreSQL cannot be read either. Whether Redis is back is asked beside this, never in its way."""
        outbox = self._outbox
        assert outbox is not None
        try:
            await outbox.open()
        except OutboxUnavailable as exc:
            log.warning("cannot read the outbox in PostgreSQL either (%s); waiting for Redis", exc)
            return False
        log.warning(
            "%s event stream %r for %.1fs: following the outbox in PostgreSQL from %s",
            "the outbox is ahead of the" if behind else "cannot read",
            self._key,
            waited,
            self._hub.last,
        )
        caught_up = asyncio.Event()
        probing = asyncio.create_task(self._probe_until_caught_up(caught_up))
        self._outbox_floor = self._hub.oldest
        self.path = "postgres"
        metrics.EVENTS_FROM_POSTGRES.set(1)
        metrics.EVENT_SOURCE_SWITCHES.labels(to="postgres").inc()
        await self._set_connected(True)
        try:
            top = await outbox.top()
            if self._hub.last is None:
                self._hub.start_at(top, [])
            elif top is not None and top.seq < self._hub.last.seq:
                # The database now read lacks events this instance dispatched (a failover to a standby that
                # lacked them): what follows is read from the relay's seam, which it places past them.
                log.warning(
                    "the outbox ends at %s, before %s which this instance dispatched (a PostgreSQL failover lost "
                    "events): following on from the relay's seam",
                    top,
                    self._hub.last,
                )
            while True:
                events = await outbox.after(self._hub.last, self._batch)
                if events:
                    self._dispatch(events)
                    continue
                if probing.done() and not caught_up.is_set():  # it failed: probe again (never stay here for good)
                    probing = asyncio.create_task(self._probe_until_caught_up(caught_up))
                if caught_up.is_set():
                    if await self._stream_caught_up():  # again, now that nothing more is dispatched meanwhile
                        log.info(
                            "event stream %r readable again and holds %s: back to Redis", self._key, self._hub.last
                        )
                        metrics.EVENT_SOURCE_SWITCHES.labels(to="redis").inc()
                        self.lag.reset()
                        return True
                    caught_up.clear()
                    probing = asyncio.create_task(self._probe_until_caught_up(caught_up))
                await outbox.wait(OUTBOX_SWEEP_SECONDS)
        except OutboxUnavailable as exc:
            log.warning("lost the outbox in PostgreSQL (%s); waiting for Redis", exc)
            await self._set_connected(False)
            return False
        finally:
            probing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probing
            self.path = "redis"
            metrics.EVENTS_FROM_POSTGRES.set(0)

    async def _probe_until_caught_up(self, caught_up: asyncio.Event) -> None:
        """Every PROBE_SECONDS, ask whether the stream has reached the hub's position; set `caught_up` once."""
        while True:
            if await self._stream_caught_up():
                caught_up.set()
                return
            await asyncio.sleep(PROBE_SECONDS)

    async def _stream_caught_up(self) -> bool:
        """Whether Redis answers and its stream has reached the hub's position (the relay republishes what it
        lacks), so that reading it from there misses nothing."""
        try:
            newest: Any = await self._redis.xrevrange(self._key, count=1)
        except Exception as exc:  # noqa: BLE001 - whatever fails (redis-py mid-failover too), the answer is "not yet"
            log.debug("the stream cannot be probed yet: %s", type(exc).__name__)
            return False
        if self._hub.last is None:
            return True
        return bool(newest) and (EventId.parse(newest[0][0]) or ORIGIN) >= self._hub.last

    async def _either(
        self, position: EventId, from_redis: Callable[[], Awaitable[T]], from_outbox: Callable[[Outbox], Awaitable[T]]
    ) -> T:
        """Run a read from `position` on Redis, or on the outbox while that is where events come from and
        `position` is not older than what this process had seen when it switched; waits for one of them."""
        backoff = Backoff(0.05, MAX_BACKOFF_SECONDS)
        while True:
            outbox = self._outbox
            floor = self._outbox_floor
            if (
                self.path == "postgres"
                and outbox is not None
                and outbox.is_open
                and (floor is None or position >= floor)
            ):
                with contextlib.suppress(OutboxUnavailable):
                    return await from_outbox(outbox)
            try:
                return await from_redis()
            except REDIS_ERRORS:
                await backoff.sleep()

    async def after(self, position: EventId) -> list[Event]:
        """The events that follow `position`, oldest first, up to the next multiple of `history_batch` in seq
        (at most `history_batch` of them)."""
        count = self.history_batch - position.seq % self.history_batch

        async def from_redis() -> list[Event]:
            entries: Any = await self._redis.xrange(self._key, min=f"({position}", count=count)
            return _range(position, count, await self._complete(position, entries))

        async def read() -> list[Event]:  # decoded once for everyone who shares the read
            return await self._either(position, from_redis, lambda outbox: outbox.after(position, count))

        # A full range never changes (the stream only grows at its end), so it may be kept for others.
        return await self.history.get((position, count), read, keep=lambda events: len(events) == count)

    async def holds(self, event_id: EventId) -> bool:
        """Whether the stream (or, while it is followed instead, the outbox) still has the event `event_id`."""
        text = str(event_id)

        async def from_redis() -> bool:
            return bool(await self._redis.xrange(self._key, min=text, max=text, count=1))

        return await self._either(event_id, from_redis, lambda outbox: outbox.holds(event_id))
