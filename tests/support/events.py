"""Test helpers for change events: a whole event system (own Redis, own database, booking and notify processes)
and subscriptions that collect what a stream delivers."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import grpc
import redis.asyncio as redis

from booking_api.booking.v1 import booking_pb2_grpc, events_pb2
from booking_api.notify.v1 import notify_pb2, notify_pb2_grpc
from devtools.servers import RedisServer
from svc_common.eventstream import ORIGIN, EventId
from tests.support.helpers import Caller, auth, uid
from tests.support.servers import ServiceProcess, booking_env, notify_env, stream_key

T = TypeVar("T")
NOTIFY_DOMAIN = "notify.v1"
CREATED = events_pb2.BOOKING_EVENT_TYPE_CREATED
DELETED = events_pb2.BOOKING_EVENT_TYPE_DELETED
RESTORED = events_pb2.BOOKING_EVENT_TYPE_RESTORED
HARD_DELETED = events_pb2.BOOKING_EVENT_TYPE_HARD_DELETED


async def eventually(
    check: Callable[[], bool | Awaitable[bool]], what: Callable[[], str], within: float = 30.0
) -> None:
    """Wait until `check()` holds (awaited when it is a coroutine function: a check that asks a server); fail with
    `what()` if it does not `within` seconds (a bound, not a target)."""
    deadline = time.monotonic() + within

    async def holds() -> bool:
        result = check()
        return await result if inspect.isawaitable(result) else result

    while not await holds():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting: {what()}")
        await asyncio.sleep(0.02)


class EventSystem:
    """A private Redis (persistent, so it can be restarted), a fresh database, and the processes a test starts."""

    def __init__(self, workdir: Path, database_url: str) -> None:
        self.workdir = workdir
        self.database_url = database_url
        self.redis = RedisServer(workdir / uid("redis"), persist=True)
        self.processes: list[ServiceProcess] = []

    def _start(self, module: str, env: dict[str, str]) -> ServiceProcess:
        process = ServiceProcess(module, env, self.workdir)
        self.processes.append(process)
        process.start()
        return process

    def booking(self, **env: str) -> ServiceProcess:
        return self._start("booking_service", {**booking_env(self.database_url, self.redis.url), **env})

    def notify(self, **env: str) -> ServiceProcess:
        return self._start("notify_service", {**notify_env(self.database_url, self.redis.url), **env})

    async def wait_published(self, event_id: str, within: float = 30) -> None:
        """Wait until the Redis stream holds the event `event_id` (its newest entry is that one or a later one)."""
        wanted = EventId.parse(event_id)
        assert wanted is not None, event_id
        client = redis.Redis.from_url(self.redis.url)

        async def held() -> bool:
            newest: Any = await client.xrevrange(stream_key(self.database_url), count=1)
            return bool(newest) and (EventId.parse(newest[0][0]) or ORIGIN) >= wanted

        try:
            await eventually(held, lambda: f"{event_id} not in the stream", within)
        finally:
            await client.aclose()

    async def flush_redis(self) -> None:
        """Redis loses all its data."""
        client = redis.Redis.from_url(self.redis.url)
        try:
            await client.flushall()
        finally:
            await client.aclose()

    def stop(self) -> None:
        for process in self.processes:
            process.stop()
        self.redis.stop()

    async def committed(self) -> list[tuple[str, int, str]]:
        """Every committed change with its stream position: (event_id, event type, booking id), in stream order
        (seams, which are no change, left out)."""
        conn = await asyncpg.connect(self.database_url)
        try:
            rows = await conn.fetch(
                "SELECT stream_ms, seq, event_type, booking->>'id' AS booking_id FROM booking_outbox"
                " WHERE event_type <> 'SEAM' ORDER BY seq"
            )
        finally:
            await conn.close()
        unplaced = sum(r["seq"] is None for r in rows)
        assert unplaced == 0, f"{unplaced} committed events have no stream position yet"
        return [
            (f"{r['stream_ms']}-{r['seq']}", events_pb2.BookingEventType.Value(f"BOOKING_EVENT_TYPE_{r['event_type']}"),
             r["booking_id"])
            for r in rows
        ]  # fmt: skip

    async def wait_relayed(self, count: int) -> list[tuple[str, int, str]]:
        """Wait until `count` committed changes all have their stream position, and return them."""
        rows: list[tuple[str, int, str]] = []

        async def placed() -> bool:
            nonlocal rows
            try:
                rows = await self.committed()
            except AssertionError:
                return False
            return len(rows) >= count

        deadline = time.monotonic() + 30
        while not await placed():
            assert time.monotonic() < deadline, f"only {len(rows)} of {count} changes got a stream position"
            await asyncio.sleep(0.05)
        return rows


class Subscription:
    """One client's view of the event stream, across reconnections: every event received, in order."""

    def __init__(self, role: str, sub: str) -> None:
        self.role, self.sub = role, sub
        self.address = ""  # where it last subscribed
        self.events: list[events_pb2.BookingEvent] = []
        self.schedule_events: list[events_pb2.ScheduleEvent] = []
        self.arrivals: list[float] = []  # when each event arrived (time.monotonic())
        self.responses = 0  # responses read (each carries one or more events)
        self.error: grpc.aio.AioRpcError | None = None
        self._channel: grpc.aio.Channel | None = None
        self._call: Any = None
        self._task: asyncio.Task[None] | None = None

    @property
    def ids(self) -> list[str]:
        return [e.event_id for e in self.events]

    @property
    def last_id(self) -> str:
        return self.events[-1].event_id if self.events else ""

    @property
    def received(self) -> list[tuple[str, str, float]]:
        """(event id, booking id, when it arrived) of each event."""
        return [(e.event_id, e.booking.id, t) for e, t in zip(self.events, self.arrivals, strict=True)]

    async def open(
        self,
        address: str = "",
        *,
        resume: bool = False,
        options: Sequence[tuple[str, Any]] = (),
        read: bool = True,
        filters: dict[str, str] | None = None,
        channel: grpc.aio.Channel | None = None,
        wait: bool = True,
    ) -> Any:
        """Subscribe on `address` (the last one if not given; from the last event received, if `resume`), on a
        connection of its own or the caller's `channel`; returns the call, once the server has accepted it
        unless not `wait`. Unless `read` is false, a task reads it as the events come; else nothing reads it
        until `read_until`."""
        await self.close()
        self.error = None
        self.address = address or self.address
        if channel is None:
            self._channel = channel = grpc.aio.insecure_channel(self.address, options=list(options))
        stub = notify_pb2_grpc.NotifyServiceStub(channel)
        fields = {"resume_after": self.last_id if resume else "", **(filters or {})}
        request = notify_pb2.SubscribeRequest(**fields)
        call = stub.Subscribe(request, metadata=auth(self.role, self.sub))
        self._call = call
        if read:
            self._task = asyncio.create_task(self._read(call))
        if wait:
            await self.wait_started(call)
        return call

    @staticmethod
    async def wait_started(call: Any) -> None:
        """Wait until the server has accepted the call (its initial metadata arrived) or failed it."""
        with contextlib.suppress(grpc.aio.AioRpcError):
            await asyncio.wait_for(call.initial_metadata(), 30)

    def _add(self, response: notify_pb2.SubscribeResponse) -> None:
        now = time.monotonic()
        self.responses += 1
        self.events.extend(response.events)
        self.arrivals.extend(now for _ in response.events)
        self.schedule_events.extend(response.schedule_events)

    async def _read(self, call: Any) -> None:
        try:
            async for response in call:
                self._add(response)
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.CANCELLED:
                self.error = error

    async def read_until(self, event_id: str) -> None:
        """Read a call opened with `read=False` here, until the event `event_id`."""
        async for response in self._call:
            self._add(response)
            if self.last_id == event_id:
                return
        raise AssertionError(f"the stream ended after {len(self.events)} events")

    async def wait_for(self, event_id: str, within: float = 30.0) -> None:
        """Wait until the event `event_id` has arrived (or the stream failed)."""
        await eventually(
            lambda: self.error is not None or event_id in self.ids,
            lambda: f"{self.role} {self.sub} did not receive {event_id}; has {len(self.events)}, last {self.last_id}",
            within,
        )
        assert self.error is None, f"stream failed: {self.error.code()} {self.error.details()}"

    async def wait_error(self, within: float = 30.0) -> grpc.aio.AioRpcError:
        await eventually(lambda: self.error is not None, lambda: f"{self.sub}'s stream did not fail", within)
        assert self.error is not None
        return self.error

    async def close(self) -> None:
        if self._call is not None:
            self._call.cancel()  # on a channel of the caller's, which stays open
            self._call = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._channel is not None:
            await self._channel.close()
            self._channel = None


async def admin_on(process: ServiceProcess, channels: list[grpc.aio.Channel]) -> Caller:
    channel = grpc.aio.insecure_channel(process.address)
    channels.append(channel)
    return Caller(booking_pb2_grpc.BookingServiceStub(channel), "admin", uid("admin"))


def assert_exactly(subscription: Subscription, committed: list[tuple[str, int, str]]) -> None:
    """The subscription received every committed event once, in stream order, each as committed."""
    assert subscription.ids == [event_id for event_id, _, _ in committed]
    assert [(e.type, e.booking.id) for e in subscription.events] == [(t, b) for _, t, b in committed]


def assert_order_per_booking(subscription: Subscription) -> None:
    kinds: dict[str, list[int]] = defaultdict(list)
    for event in subscription.events:
        kinds[event.booking.id].append(event.type)
    assert all(k == [CREATED, DELETED] for k in kinds.values()), kinds
