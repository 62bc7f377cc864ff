"""notify_service.lag.OutboxLag: when the Redis stream counts as behind the outbox (and notify follows the outbox
instead). No wall-clock bounds: a fallback delay far longer than the test, or none worth waiting for."""

from __future__ import annotations

import asyncio
import time

from notify_service.lag import OutboxLag


def now_ms() -> int:
    return int(time.time() * 1000)


async def test_a_fresh_notice_is_not_behind_before_the_fallback_delay() -> None:
    """Redis refusing writes for less than the delay keeps notify on Redis: the timer is armed for the delay
    (less what the oldest waiting event already waited), not fired at once."""
    lag = OutboxLag(fallback_after=60.0)
    lag.placed_notice(f"5 {now_ms()}")
    for _ in range(5):
        await asyncio.sleep(0.01)  # a timer due now would have run by then
    assert lag.since is not None and not lag.behind.is_set()


async def test_a_notice_whose_oldest_event_waited_the_whole_delay_is_behind_at_once() -> None:
    lag = OutboxLag(fallback_after=60.0)
    lag.placed_notice(f"5 {now_ms() - 61_000}")
    await asyncio.wait_for(lag.behind.wait(), 5)


async def test_dispatching_the_newest_seq_placed_means_nothing_is_behind() -> None:
    lag = OutboxLag(fallback_after=0.05)
    lag.placed_notice(f"5 {now_ms()}")
    lag.dispatched(5)
    assert (lag.placed, lag.since) == (0, None)
    await asyncio.sleep(0.2)  # past the delay: the timer was cancelled
    assert not lag.behind.is_set()


async def test_dispatching_less_than_placed_stays_behind_and_a_notice_already_dispatched_is_ignored() -> None:
    lag = OutboxLag(fallback_after=0.05)
    lag.placed_notice(f"5 {now_ms()}")
    lag.dispatched(4)
    await asyncio.wait_for(lag.behind.wait(), 5)
    caught_up = OutboxLag(fallback_after=0.05)
    caught_up.dispatched(7)
    caught_up.placed_notice(f"7 {now_ms()}")
    assert caught_up.since is None
