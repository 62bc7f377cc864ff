"""Whether the Redis stream has fallen behind the outbox: the signal that makes a notify process follow the outbox
even while Redis still answers its reads.

Redis's bad days are mostly sick, not down: full (OOM), read-only (a demoted primary), failing snapshots (MISCONF),
paused or stalled. Then the relay cannot append, but notify can still read a stream that no longer grows. While
the relay cannot publish, it tells notify processes (PostgreSQL NOTIFY on booking_outbox_placed) the newest
position it placed and since when the oldest one waits. Once the outbox has been ahead of what this process has
dispatched for REDIS_FALLBACK_AFTER_SECONDS, `behind` is set: the stream reader stops waiting on Redis and
follows the outbox (notify_service.stream). Nothing here polls: a timer is armed only while the outbox is ahead.
"""

from __future__ import annotations

import asyncio
import time


class OutboxLag:
    def __init__(self, fallback_after: float) -> None:
        self.fallback_after = fallback_after
        self.placed = 0  # the newest seq the relay said it placed without publishing it
        self.since: float | None = None  # (monotonic) since when the outbox is ahead of what was dispatched
        self.behind = asyncio.Event()  # set once it has been ahead for `fallback_after`
        self._timer: asyncio.TimerHandle | None = None
        self._dispatched = 0

    def placed_notice(self, payload: str) -> None:
        """The relay placed events up to a seq it could not publish: `<seq> <ms of the oldest waiting>`."""
        seq_text, _, ms_text = payload.partition(" ")
        if not seq_text.isdigit():
            return
        seq = int(seq_text)
        self.placed = max(self.placed, seq)
        if seq <= self._dispatched or self.since is not None:
            return
        waited = 0.0
        if ms_text.isdigit() and int(ms_text) > 0:  # how long the oldest has waited, by the relay's clock
            waited = min(max(0.0, time.time() - int(ms_text) / 1000), self.fallback_after)
        self.since = time.monotonic() - waited
        loop = asyncio.get_running_loop()
        self._timer = loop.call_at(loop.time() + self.fallback_after - waited, self._expired)

    def dispatched(self, seq: int) -> None:
        """This process has dispatched up to `seq` (called per batch: a comparison unless the outbox is ahead)."""
        self._dispatched = seq
        if self.placed and seq >= self.placed:
            self.placed = 0
            self.reset()

    def reset(self) -> None:
        """The stream is followed again from where the outbox left off."""
        self.since = None
        self.behind.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        if self.since is not None:
            self.behind.set()
