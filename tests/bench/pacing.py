"""Open-loop load for the benchmarks: start one call every 1/rate seconds, whatever the calls before it are
doing (a slow or stuck call never holds up the next, as real clients would not wait for each other)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any


async def open_loop(rate: float, seconds: float, one: Callable[[int], Coroutine[Any, Any, None]]) -> int:
    """Run `one(k)` for k = 0, 1, ... at `rate` per second for `seconds`; returns how many were started, once
    all have finished."""
    tasks = []
    start = time.perf_counter()
    for k in range(int(rate * seconds)):
        delay = start + k / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(k)))
    await asyncio.gather(*tasks)
    return len(tasks)
