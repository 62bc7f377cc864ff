"""The reads a resuming subscriber needs, from the stream (or from the outbox while that is where events come
from: notify_service.source), shared between the subscribers that need the same history at the same time.

History reads are shared (SharedReads): subscribers that need the same range at the same time wait for one
XRANGE, the last few full ranges read are kept in memory, reads end on multiples of their size in seq (so
subscribers that started from different cursors go on to read the same ranges), and only a few run at once, so a
crowd resuming at once costs Redis a bounded number of reads. Subscribers resuming from a recent cursor need
none: the hub remembers recent events (see notify_service.hub). A read waits for Redis to come back rather than
fail: subscribers see a delay, not a gap.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, TypeVar

import redis.asyncio as redis

from notify_service.entries import ErasedCopies
from notify_service.fallback import Outbox, OutboxUnavailable
from notify_service.hub import Event, Hub
from notify_service.source import EventSource
from svc_common.backoff import Backoff
from svc_common.eventstream import EventId
from svc_common.redis_client import REDIS_ERRORS

T = TypeVar("T")
HISTORY_READS_AT_ONCE = 4  # history XRANGEs in flight per process; the rest queue behind them
MAX_BACKOFF_SECONDS = 1.0


def within_range(position: EventId, count: int, events: list[Event]) -> list[Event]:
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


class SharedReads:
    """Reads by key: concurrent reads of one key share one call (cancelled when nobody waits for it any more),
    at most `at_once` calls run at a time, and the last `kept` results that `keep` accepts are answered from
    memory (only results that can no longer change should be kept)."""

    def __init__(self, at_once: int, kept: int = 16) -> None:
        self._reads: dict[Hashable, tuple[asyncio.Future[Any], list[int], int]] = {}
        self._kept: OrderedDict[Hashable, Any] = OrderedDict()
        self._max_kept = kept
        self._slots = asyncio.Semaphore(at_once)
        self._generation = 0  # results of reads started before the last forget() are not kept
        self.calls = 0  # reads actually made

    def forget(self) -> None:
        """Drop every result kept, and keep none of the reads already under way (what they read may be stale)."""
        self._kept.clear()
        self._generation += 1

    async def _limited(self, read: Callable[[], Awaitable[T]]) -> T:
        async with self._slots:
            self.calls += 1
            return await read()

    async def get(self, key: Hashable, read: Callable[[], Awaitable[T]], keep: Callable[[T], bool]) -> T:
        if key in self._kept:
            self._kept.move_to_end(key)
            result: T = self._kept[key]
            return result
        shared = self._reads.get(key)
        if shared is None:
            shared = (asyncio.ensure_future(self._limited(read)), [0], self._generation)
            self._reads[key] = shared
        task, waiting, generation = shared
        waiting[0] += 1
        try:
            result = await asyncio.shield(task)
        finally:
            waiting[0] -= 1
            if waiting[0] == 0:
                if self._reads.get(key) is shared:
                    del self._reads[key]
                task.cancel()  # a no-op once it is done
        if keep(result) and self._max_kept > 0 and generation == self._generation:
            self._kept[key] = result
            self._kept.move_to_end(key)
            while len(self._kept) > self._max_kept:
                self._kept.popitem(last=False)
        return result


class History:
    """History after a position, for subscribers that resume (notify_service.subscriptions)."""

    def __init__(
        self,
        client: redis.Redis,
        key: str,
        hub: Hub,
        source: EventSource,
        *,
        batch: int = 1000,
        erased: ErasedCopies | None = None,
    ) -> None:
        self._redis = client
        self._key = key
        self._hub = hub
        self._source = source
        self.batch = batch
        self._erased = erased or ErasedCopies(client, key)
        self.reads = SharedReads(HISTORY_READS_AT_ONCE)
        self._erasures = hub.erasures

    def _forget_if_erased(self) -> None:
        """Kept ranges may hold notes the hub has erased since: drop them."""
        if self._hub.erasures != self._erasures:
            self._erasures = self._hub.erasures
            self.reads.forget()

    async def _either(
        self, position: EventId, from_redis: Callable[[], Awaitable[T]], from_outbox: Callable[[Outbox], Awaitable[T]]
    ) -> T:
        """Run a read from `position` on the outbox when that is its side now (EventSource.outbox_for), else on
        Redis; waits for one of them."""
        backoff = Backoff(0.05, MAX_BACKOFF_SECONDS)
        while True:
            outbox = self._source.outbox_for(position)
            if outbox is not None:
                try:
                    return await from_outbox(outbox)
                except OutboxUnavailable:
                    pass
            try:
                return await from_redis()
            except REDIS_ERRORS:
                await backoff.sleep()

    async def after(self, position: EventId) -> list[Event]:
        """The events that follow `position`, oldest first, up to the next multiple of `batch` in seq (at most
        `batch` of them)."""
        self._forget_if_erased()
        count = self.batch - position.seq % self.batch

        async def from_redis() -> list[Event]:
            entries: Any = await self._redis.xrange(self._key, min=f"({position}", count=count)
            return within_range(position, count, await self._erased.complete(position, entries))

        async def read() -> list[Event]:  # decoded once for everyone who shares the read
            return await self._either(position, from_redis, lambda outbox: outbox.after(position, count))

        # A full range never changes (the stream only grows at its end), so it may be kept for others.
        return await self.reads.get((position, count), read, keep=lambda events: len(events) == count)

    async def holds(self, event_id: EventId) -> bool:
        """Whether the stream (or, while it is followed instead, the outbox) still has the event `event_id`."""
        text = str(event_id)

        async def from_redis() -> bool:
            return bool(await self._redis.xrange(self._key, min=text, max=text, count=1))

        return await self._either(event_id, from_redis, lambda outbox: outbox.holds(event_id))
