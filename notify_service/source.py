"""Where this process's events come from: the Redis stream, or the outbox in PostgreSQL while Redis cannot be read
(or its stream has fallen behind the outbox: notify_service.lag); and the one place events enter the hub.

`follow_outbox` feeds the hub from the outbox (notify_service.fallback) until the stream holds the events up to
the hub's position again, asked beside it every PROBE_SECONDS, never in its way; then the live loop
(notify_service.stream) goes back to the stream at that exact position. History reads ask `outbox_for` which
side serves a position meanwhile: the outbox only back to what this process had seen when it switched (older
history is Redis's, under Redis's retention).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as redis

from notify_service import metrics
from notify_service.fallback import Outbox, OutboxUnavailable
from notify_service.hub import Event, Hub
from notify_service.lag import OutboxLag
from svc_common.eventstream import ORIGIN, EventId

log = logging.getLogger(__name__)

OUTBOX_SWEEP_SECONDS = 0.25  # following the outbox: how long to wait for the relay's notification at most
PROBE_SECONDS = 0.5  # following the outbox: how often to ask whether Redis is back

OnChange = Callable[[bool, str], Awaitable[None]]  # told (readable, "redis" or "postgres") whenever either changes


class EventSource:
    def __init__(
        self,
        client: redis.Redis,
        key: str,
        hub: Hub,
        lag: OutboxLag,
        *,
        outbox: Outbox | None = None,
        batch: int = 500,
        on_change: OnChange | None = None,
    ) -> None:
        self._redis = client
        self._key = key
        self._hub = hub
        self.lag = lag
        self.outbox = outbox
        self._batch = batch
        self._on_change = on_change
        self.path = "redis"  # where events come from now: "redis", or "postgres" while Redis cannot be read
        # While following the outbox: history from the outbox only from here on (the oldest event this process
        # had seen when Redis went away).
        self._outbox_floor: EventId | None = None
        self.connected = False
        self._reported = (False, "redis")

    async def set_connected(self, connected: bool) -> None:
        if connected != self.connected:
            self.connected = connected
            if connected and self.path == "redis":
                log.info("reading event stream %r", self._key)
            elif not connected:
                log.warning("cannot read event stream %r; reconnecting", self._key)
        if (connected, self.path) != self._reported:
            self._reported = (connected, self.path)
            if self._on_change is not None:
                await self._on_change(connected, self.path)

    def dispatch(self, events: list[Event]) -> None:
        """Hand `events` (read now) to the hub: the one way in, from either side."""
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

    def outbox_for(self, position: EventId) -> Outbox | None:
        """The outbox, if a history read from `position` is the outbox's to serve now; else None (Redis's)."""
        outbox, floor = self.outbox, self._outbox_floor
        if self.path == "postgres" and outbox is not None and outbox.is_open and (floor is None or position >= floor):
            return outbox
        return None

    async def follow_outbox(self, waited: float, *, behind: bool) -> bool:
        """Feed the hub from the outbox until the stream holds the events up to the hub's position again; False
        if PostgreSQL cannot be read either (or there is no outbox). Whether Redis is back is asked beside this,
        never in its way."""
        outbox = self.outbox
        if outbox is None:
            return False
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
        await self.set_connected(True)
        try:
            top = await outbox.top()
            if self._hub.last is None:
                # Nothing read from the stream yet (it was empty): what the relay has published is older than any
                # subscriber here, what it never published (placed while Redis was down) is new to all of them.
                self._hub.start_at(await outbox.published(), [])
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
                    self.dispatch(events)
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
            await self.set_connected(False)
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
