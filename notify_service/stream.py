"""The live loop: one reader per process follows the event stream from its end and feeds the hub.

Redis trouble never ends a subscription: the reader reconnects and continues from the last id it dispatched.
While Redis cannot be read, or its stream has fallen behind the outbox (notify_service.lag), for the
lag's `fallback_after` seconds, it hands over to the outbox (EventSource.follow_outbox) and comes back to the stream
at the exact position the outbox left off.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import redis.asyncio as redis

from notify_service import metrics
from notify_service.entries import ErasedCopies
from notify_service.hub import DEFAULT_WINDOW, Hub
from notify_service.source import EventSource
from svc_common.backoff import Backoff
from svc_common.eventstream import EventId
from svc_common.redis_client import REDIS_ERRORS

MAX_BACKOFF_SECONDS = 1.0


def _ignore_outcome(task: asyncio.Future[Any]) -> None:
    """Retrieve an abandoned read's outcome (asyncio would log one never retrieved)."""
    if not task.cancelled():
        task.exception()


class StreamReader:
    def __init__(
        self,
        client: redis.Redis,
        key: str,
        hub: Hub,
        source: EventSource,
        *,
        batch: int = 500,
        block_ms: int = 1000,
        window: int = DEFAULT_WINDOW,
        blocking: redis.Redis | None = None,
        erased: ErasedCopies | None = None,
    ) -> None:
        self._redis = client
        # For the blocking XREAD: a client whose calls may take the block time on top of the timeout.
        self._blocking = blocking or client
        self._key = key
        self._hub = hub
        self._source = source
        self._erased = erased or ErasedCopies(client, key)
        self._batch = batch
        self._block_ms = block_ms
        self._window = window  # recent events loaded into the hub at start
        self._fallback_after = source.lag.fallback_after

    async def lost(self) -> None:
        """The reading task failed (its supervisor restarts it): subscribers wait meanwhile."""
        await self._source.set_connected(False)

    async def run(self) -> None:
        """Follow the stream from its current end, dispatching to the hub, until cancelled. While Redis cannot be
        read, or its stream has fallen behind the outbox, for `fallback_after` seconds, follow the outbox instead
        (when there is one), counting from the first failed call."""
        source, lag = self._source, self._source.lag
        position: bytes | None = None  # the last entry read (ours or not); None: not positioned yet
        if self._hub.positioned.is_set():  # restarted after a failure: go on from what was dispatched last
            position = str(self._hub.last).encode() if self._hub.last is not None else b"0-0"
        backoff = Backoff(0.05, MAX_BACKOFF_SECONDS)
        unreadable_since: float | None = None
        while True:
            behind = lag.behind.is_set()
            if behind or (unreadable_since is not None and time.monotonic() - unreadable_since >= self._fallback_after):
                if source.outbox is not None:
                    since = lag.since if behind and lag.since is not None else unreadable_since
                    if await source.follow_outbox(time.monotonic() - (since or 0.0), behind=behind):
                        # Back to the stream exactly where the outbox left off.
                        position = str(self._hub.last).encode() if self._hub.last is not None else None
                        unreadable_since = None
                        backoff.reset()
                        continue
                    lag.reset()
                    await backoff.sleep()  # PostgreSQL cannot be read either: wait, then try Redis again
                else:
                    lag.reset()  # no outbox to follow: wait for Redis
            started = time.monotonic()
            try:
                if position is None:
                    newest: Any = await self._redis.xrevrange(self._key, count=max(self._window, 1))
                    # An empty stream: read from its start, and take whatever event comes first.
                    recent = await self._erased.complete(None, newest[::-1])
                    self._hub.start_at(EventId.parse(newest[0][0]) if newest else None, recent)
                    position = newest[0][0] if newest else b"0-0"
                    await source.set_connected(True)
                reply = await self._read_unless_behind(position)
                if reply is None:
                    continue  # fell behind the outbox while waiting
                read = [await self._erased.complete(EventId.parse(position), entries) for _key, entries in reply]
                # Readable once a read succeeded (not before each attempt: that flapped during an outage).
                await source.set_connected(True)
                backoff.reset()
                unreadable_since = None
            except REDIS_ERRORS:
                await source.set_connected(False)
                unreadable_since = unreadable_since or started  # the fallback timer starts at the failed call
                if source.outbox is None or time.monotonic() - unreadable_since < self._fallback_after:
                    await self._sleep_unless_behind(backoff.next())
                continue
            for (_key, entries), events in zip(reply, read, strict=True):
                position = entries[-1][0]
                source.dispatch(events)
                newest = EventId.parse(position)
                if newest is not None:
                    metrics.READ_LAG.set(max(0.0, time.time() - newest.ms / 1000))

    async def _read_unless_behind(self, position: bytes) -> list[Any] | None:
        """XREAD from `position` (blocking up to the block time); None if the stream fell behind the outbox for
        the fallback delay meanwhile. The read then is abandoned, not awaited: redis-py may swallow a cancellation
        and finish its blocking read first, and nothing may wait on a stalled Redis."""
        behind_event = self._source.lag.behind
        if behind_event.is_set():
            return None
        read = asyncio.ensure_future(
            self._blocking.xread({self._key: position}, count=self._batch, block=self._block_ms)
        )
        behind = asyncio.ensure_future(behind_event.wait())
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
                await self._source.lag.behind.wait()
