"""History reads shared between the subscribers that need the same range at the same time."""

from __future__ import annotations

import asyncio

from notify_service.history import SharedReads


def never(_result: object) -> bool:
    return False


async def test_concurrent_reads_of_one_key_make_one_call_and_all_get_its_result() -> None:
    reads = SharedReads(at_once=4)
    release = asyncio.Event()
    calls = 0

    async def read() -> str:
        nonlocal calls
        calls += 1
        await release.wait()
        return "range"

    waiters = [asyncio.create_task(reads.get("k", read, keep=never)) for _ in range(50)]
    await asyncio.sleep(0.01)
    release.set()
    async with asyncio.timeout(5):
        assert await asyncio.gather(*waiters) == ["range"] * 50
    assert calls == reads.calls == 1


async def test_reads_in_flight_are_bounded_and_the_rest_queue() -> None:
    reads = SharedReads(at_once=2)
    running = 0
    most = 0

    async def read() -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.01)
        running -= 1

    async with asyncio.timeout(5):
        await asyncio.gather(*(reads.get(n, read, keep=never) for n in range(10)))
    assert most == 2 and reads.calls == 10


async def test_a_read_nobody_waits_for_any_more_is_cancelled_and_one_waiter_leaving_cancels_nothing() -> None:
    reads = SharedReads(at_once=1)
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def read() -> str:
        started.set()
        try:
            await asyncio.sleep(0.2)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "done"

    first = asyncio.create_task(reads.get("k", read, keep=never))
    second = asyncio.create_task(reads.get("k", read, keep=never))
    await started.wait()
    first.cancel()
    async with asyncio.timeout(5):
        assert await second == "done"  # the other waiter still gets it
    assert not cancelled.is_set()

    started.clear()
    alone = asyncio.create_task(reads.get("j", read, keep=never))
    await started.wait()
    alone.cancel()
    async with asyncio.timeout(5):
        await cancelled.wait()  # nobody left: the read stops instead of running on (say, waiting for Redis)


async def test_results_it_may_keep_are_answered_from_memory_and_only_the_last_few() -> None:
    reads = SharedReads(at_once=4, kept=2)

    async def read() -> str:
        return "full"

    async def short() -> str:
        return "partial"

    async with asyncio.timeout(5):
        for key in ("a", "a", "b", "a", "c", "b"):
            await reads.get(key, read, keep=lambda result: result == "full")
        assert reads.calls == 4  # a, b, c, then b again: it was the oldest of three kept when c came
        for _ in range(3):
            await reads.get("p", short, keep=lambda result: result == "full")
        assert reads.calls == 7  # a result that may still grow is read again each time


def always(_result: object) -> bool:
    return True


async def test_forget_drops_kept_results_and_keeps_none_of_the_reads_already_under_way() -> None:
    """A hard delete's erasure makes what was read before it stale: neither a kept range nor a read that was in
    flight when it happened may answer later readers."""
    reads = SharedReads(at_once=4)
    version = "with notes"
    release = asyncio.Event()

    async def read() -> str:
        await release.wait()
        return version

    release.set()
    async with asyncio.timeout(5):
        assert await reads.get("kept", read, keep=always) == "with notes"
        release.clear()
        in_flight = asyncio.create_task(reads.get("in flight", read, keep=always))
        await asyncio.sleep(0)  # the read has started
        reads.forget()
        release.set()
        assert await in_flight == "with notes"  # its own waiters still get it
        version = "erased"
        assert await reads.get("kept", read, keep=always) == "erased"
        assert await reads.get("in flight", read, keep=always) == "erased"
    assert reads.calls == 4
