"""The Subscribe use case: live events, or history from a cursor followed by live events, with no gap and no
duplicate at the seam.

A resuming subscriber first reads history (from the hub's window of recent events while its position lies in
it, otherwise from Redis in shared ranges: notify_service.history) until it reaches the position the hub has
dispatched up to, then joins the hub in the same step of the event loop (no await in between), so the hub
offers it exactly the events after its position. It keeps checking that each event follows the previous one,
so a cursor whose next events are gone ends the call with OUT_OF_RANGE instead of skipping them.

Every subscriber starts once the instance knows its place in the stream (its reader's first read, or the outbox
while Redis cannot be read): until then there is no position to start after, and a live subscriber accepted
earlier would miss what the stream got between its acceptance and that read. Subscribe waits for it, bounded
(`start_wait_seconds`), and is UNAVAILABLE `NOT_READY` past the bound.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from notify_service import metrics
from notify_service.history import History
from notify_service.hub import BatchLimits, EventFilter, Hub, Subscriber, already_had, cursor_expired, take_batch
from svc_common.errors import Unavailable
from svc_common.eventstream import ORIGIN, EventId


@dataclass(frozen=True)
class SubscriptionConfig:
    max_queue: int = 1000  # events a subscriber may fall behind before it is ended as SLOW_CONSUMER
    limits: BatchLimits = field(default_factory=BatchLimits)  # what one response may carry
    start_wait_seconds: float = 10.0  # how long a Subscribe waits for the instance to find its place in the stream


class Subscriptions:
    def __init__(self, hub: Hub, history: History, config: SubscriptionConfig) -> None:
        self._hub = hub
        self._history = history
        self._config = config

    async def open(self, event_filter: EventFilter, resume_after: EventId | None) -> Subscriber:
        """A new subscriber, once the hub has a position; a live one (no cursor) is registered at once, so it gets
        every event after that position."""
        if not self._hub.positioned.is_set():
            try:
                async with asyncio.timeout(self._config.start_wait_seconds):
                    await self._hub.positioned.wait()
            except TimeoutError:
                raise Unavailable(
                    "this instance has not been able to read the event stream yet; retry, or subscribe on another "
                    "instance",
                    reason="NOT_READY",
                ) from None
        subscriber = Subscriber(event_filter, self._hub.last, self._config.max_queue, self._config.limits)
        if resume_after is None:
            self._hub.add(subscriber)
        return subscriber

    async def replay(self, subscriber: Subscriber, resume_after: EventId) -> AsyncIterator[bytes]:
        """History after `resume_after` up to the hub's position, then `subscriber` joins the hub for the rest
        (`subscriber.next()`); raises OUT_OF_RANGE if the cursor cannot be honoured."""
        async for payload in self._replay(subscriber, resume_after):
            yield payload
        self._hub.add(subscriber)

    def close(self, subscriber: Subscriber) -> None:
        """Forget `subscriber` (whether or not it was registered yet), counting what it was handed last."""
        self._hub.discard(subscriber)
        subscriber.release()
        metrics.count_deliveries((subscriber,))

    async def _known(self, cursor: EventId) -> bool:
        """Whether nothing follows `cursor` because it is the newest event (not because it is unknown)."""
        if cursor == self._hub.last or (cursor == ORIGIN and self._hub.last is None):
            return True
        return await self._history.holds(cursor)

    async def _replay(self, subscriber: Subscriber, cursor: EventId) -> AsyncIterator[bytes]:
        """History after `cursor` up to the hub's position; leaves `subscriber.last` where history ended."""
        position = cursor
        crossed = subscriber.crossed_from
        first = True
        while True:
            events = self._hub.recent_after(position, self._history.batch)
            if events is None:
                events = await self._history.after(position)
                if first and not events and not await self._known(position):
                    raise cursor_expired(cursor)
            first = False
            matched: list[bytes] = []
            gap = False
            for event in events:
                if not event.continues(position):
                    gap = True
                    break
                if event.seam:
                    crossed = position
                position = event.id
                if event.repeats is not None and already_had(event.repeats, crossed):
                    continue
                if subscriber.filter.matches(event):
                    matched.append(event.payload)  # type: ignore[arg-type]  # matches() excludes None
            while matched:  # what came before a gap is delivered before the call ends
                waiting = len(matched)
                batch = take_batch(matched, subscriber.limits)
                subscriber.delivered += waiting - len(matched)
                subscriber.responses += 1
                yield batch
            if gap:
                raise cursor_expired(position)
            hub = self._hub.last
            if not events or hub is None or position >= hub:
                subscriber.last, subscriber.crossed_from = position, crossed
                return
