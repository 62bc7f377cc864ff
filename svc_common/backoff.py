"""Exponential backoff with jitter: the one helper behind every retry and reconnect loop of both services."""

from __future__ import annotations

import asyncio
import random


class Backoff:
    """Delays that start at `initial` and double up to `maximum`; each one is jittered by up to -20% so that
    many clients retrying at once spread out. `reset()` after a success."""

    def __init__(self, initial: float, maximum: float) -> None:
        self._initial = initial
        self._maximum = maximum
        self._next = initial

    def next(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, self._maximum)
        return delay * random.uniform(0.8, 1.0)

    def reset(self) -> None:
        self._next = self._initial

    async def sleep(self) -> None:
        await asyncio.sleep(self.next())
