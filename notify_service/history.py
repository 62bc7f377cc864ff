"""Reads shared between the subscribers that need the same history at the same time (notify_service.stream):
concurrent reads of one range make one call, a bounded number run at once, and full ranges are kept."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")


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
