"""The stream reader while it follows the outbox (Redis unreadable), with stand-ins for Redis and PostgreSQL:
history comes from the outbox only back to what the process had seen when it switched."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis.asyncio as redis

from notify_service.fallback import OutboxUnavailable
from notify_service.hub import Event, Hub
from svc_common.eventstream import EventId
from tests.support.events import eventually
from tests.support.notify_path import event_path


def event(seq: int) -> Event:
    return Event(EventId(1000 + seq, seq), "c", "p", "b", f"e{seq}".encode())


class DownRedis:
    """Every call fails as an unreachable Redis does."""

    def __getattr__(self, name: str) -> Any:
        async def fail(*_: object, **__: object) -> None:
            raise redis.ConnectionError("Redis is down")

        return fail


class Outbox:
    def __init__(self) -> None:
        self.is_open = False
        self.reads: list[EventId | None] = []

    async def open(self) -> None:
        self.is_open = True

    async def close(self) -> None:
        self.is_open = False

    async def after(self, position: EventId | None, count: int) -> list[Event]:
        self.reads.append(position)
        return []

    async def holds(self, event_id: EventId) -> bool:
        return True

    async def top(self) -> EventId | None:
        return None

    async def published(self) -> EventId | None:
        return None

    async def wait(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class OutboxWithEvents(Outbox):
    """Events 1..5 placed, the relay having published 1..3 before Redis went away."""

    async def after(self, position: EventId | None, count: int) -> list[Event]:
        self.reads.append(position)
        return [event(seq) for seq in range(1, 6) if position is None or seq > position.seq][:count]

    async def top(self) -> EventId | None:
        return event(5).id

    async def published(self) -> EventId | None:
        return event(3).id


async def test_an_instance_that_had_read_nothing_gets_from_the_outbox_what_the_relay_never_published() -> None:
    """The stream was empty when the instance began (it took whatever came first): the events placed while
    Redis was down are new to its subscribers, those the relay had published before are not."""
    hub, outbox = Hub(window=10), OutboxWithEvents()
    wired = event_path(DownRedis(), "k", hub, outbox=outbox, fallback_after=0.1)  # type: ignore[arg-type]
    following = asyncio.create_task(wired.reader.run())
    try:
        await eventually(lambda: hub.last == event(5).id, lambda: f"at {hub.last}", within=5)
    finally:
        following.cancel()
        await asyncio.gather(following, return_exceptions=True)
    assert outbox.reads[0] == event(3).id
    assert hub.recent_after(event(3).id, 10) == [event(4), event(5)]


async def test_history_from_the_outbox_only_back_to_what_was_seen_older_waits_for_redis() -> None:
    hub = Hub(window=5)
    outbox = Outbox()
    switched = asyncio.Event()

    async def changed(readable: bool, path: str) -> None:
        if readable and path == "postgres":
            switched.set()

    wired = event_path(DownRedis(), "k", hub, outbox=outbox, fallback_after=0.1, on_change=changed)  # type: ignore[arg-type]
    reader, history = wired.reader, wired.history
    hub.start_at(EventId(1020, 20), [event(seq) for seq in range(16, 21)])  # what it had seen: 16..20
    following = asyncio.create_task(reader.run())
    try:
        async with asyncio.timeout(5):
            await switched.wait()
            assert await history.after(EventId(1018, 18)) == []  # from the outbox
            assert EventId(1018, 18) in outbox.reads
            assert await history.holds(EventId(1016, 16))
        with pytest.raises(TimeoutError):  # older than anything seen: Redis's to answer, under its retention
            async with asyncio.timeout(0.5):
                await history.after(EventId(1010, 10))
        assert EventId(1010, 10) not in outbox.reads
    finally:
        following.cancel()
        await asyncio.gather(following, return_exceptions=True)
    assert wired.source.path == "redis"  # the outbox stays open: its own task (OutboxReader.run) owns the connection


class RedisThatWentDown:
    """Answers the first read (the stream's end), then fails every read as a Redis that went down."""

    def __init__(self) -> None:
        self.reads = 0

    async def xrevrange(self, *_: object, **__: object) -> list[Any]:
        return []

    async def xread(self, *_: object, **__: object) -> None:
        self.reads += 1
        raise redis.ConnectionError("Redis is down")


async def test_readability_does_not_flap_while_redis_is_down() -> None:
    down = RedisThatWentDown()
    reported: list[bool] = []

    async def changed(readable: bool, _path: str) -> None:
        reported.append(readable)

    reader = event_path(down, "k", Hub(), on_change=changed).reader  # type: ignore[arg-type]
    reading = asyncio.create_task(reader.run())
    await eventually(lambda: down.reads >= 5, lambda: f"{down.reads} reads", within=5)  # many reconnections
    reading.cancel()
    await asyncio.gather(reading, return_exceptions=True)
    assert reported == [True, False]  # up once (the stream's end was read), then down, and it stays down


class CountingDownRedis(DownRedis):
    def __init__(self) -> None:
        self.calls: list[float] = []  # when each was made

    def __getattr__(self, name: str) -> Any:
        self.calls.append(time.monotonic())
        return super().__getattr__(name)


@pytest.mark.timeout(10)  # a busy loop never yields to the event loop: it hangs the test, so bound it
@pytest.mark.parametrize("outbox", [None, "unreachable"])
async def test_while_neither_redis_nor_the_outbox_answers_the_reader_backs_off(outbox: str | None) -> None:
    """Past the fallback delay, with no outbox or one PostgreSQL cannot serve, the reader still waits between
    tries, longer each time (a busy loop would make its calls within microseconds). Only lower bounds on time:
    a loaded machine makes the gaps longer, never shorter."""

    class Unreachable(Outbox):
        async def open(self) -> None:
            raise OutboxUnavailable("PostgreSQL is down too")

    down = CountingDownRedis()
    reader = event_path(
        down,  # type: ignore[arg-type]
        "k",
        Hub(window=5),
        outbox=Unreachable() if outbox else None,
        fallback_after=0.1,
    ).reader
    reading = asyncio.create_task(reader.run())
    await eventually(lambda: len(down.calls) >= 6, lambda: f"{len(down.calls)} calls", within=5)
    reading.cancel()
    await asyncio.gather(reading, return_exceptions=True)
    first, *_, sixth = down.calls[:6]
    # Five waits, the back-off's first five at least (0.05 s doubling, jittered by at most -20%) if each try
    # makes one call, and never less than its first four if a try makes two.
    assert sixth - first >= 0.8 * (0.05 + 0.1 + 0.2 + 0.4) / 2, [round(t - first, 3) for t in down.calls]
