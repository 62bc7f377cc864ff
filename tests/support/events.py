"""Test helpers for change events: a whole event system (own Redis, own database, booking and notify processes)
and subscriptions that collect what a stream delivers."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import grpc
import redis.asyncio as redis

from booking_api.booking.v1 import booking_pb2_grpc, events_pb2
from booking_api.notify.v1 import notify_pb2, notify_pb2_grpc
from svc_common.dev.servers import RedisServer
from tests.support.helpers import Caller, auth, uid
from tests.support.servers import ServiceProcess, booking_env, notify_env

T = TypeVar("T")
NOTIFY_DOMAIN = "notify.v1"
CREATED = events_pb2.BOOKING_EVENT_TYPE_CREATED
DELETED = events_pb2.BOOKING_EVENT_TYPE_DELETED
RESTORED = events_pb2.BOOKING_EVENT_TYPE_RESTORED
HARD_DELETED = events_pb2.BOOKING_EVENT_TYPE_HARD_DELETED


async def eventually(check: Callable[[], bool], what: Callable[[], str], within: float = 30.0) -> None:
    """Wait until `check()` holds; fail with `what()` if it does not `within` seconds (a bound, not a target)."""
    deadline = time.monotonic() + within
    while not check():
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
        """Every committed change with its stream position: (event_id, event type, booking id), in stream order."""
        conn = await asyncpg.connect(self.database_url)
        try:
            rows = await conn.fetch(
                "SELECT stream_ms, seq, event_type, booking->>'id' AS booking_id FROM booking_outbox ORDER BY seq"
            )
        finally:
            await conn.close()
        unplaced = sum(r["seq"] is None for r in rows)
        assert unplaced == 0, f"{unplaced} committed events have no stream position yet"
        types = {"CREATED": CREATED, "DELETED": DELETED, "RESTORED": RESTORED, "HARD_DELETED": HARD_DELETED}
        return [(f"{r['stream_ms']}-{r['seq']}", types[r["event_type"]], r["booking_id"]) for r in rows]

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
        self.events: list[events_pb2.BookingEvent] = []
        self.error: grpc.aio.AioRpcError | None = None
        self._channel: grpc.aio.Channel | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def ids(self) -> list[str]:
        return [e.event_id for e in self.events]

    @property
    def last_id(self) -> str:
        return self.events[-1].event_id if self.events else ""

    async def open(
        self,
        address: str,
        *,
        resume: bool = False,
        options: Sequence[tuple[str, Any]] = (),
        read: bool = True,
        filters: dict[str, str] | None = None,
    ) -> Any:
        """Subscribe on `address` (from the last event received, if `resume`); returns the call."""
        await self.close()
        self.error = None
        self._channel = grpc.aio.insecure_channel(address, options=list(options))
        stub = notify_pb2_grpc.NotifyServiceStub(self._channel)
        fields = {"resume_after": self.last_id if resume else "", **(filters or {})}
        request = notify_pb2.SubscribeRequest(**fields)
        call = stub.Subscribe(request, metadata=auth(self.role, self.sub))
        if read:
            self._task = asyncio.create_task(self._read(call))
        await self.wait_started(call)
        return call

    @staticmethod
    async def wait_started(call: Any) -> None:
        """Wait until the server has accepted the call (its initial metadata arrived) or failed it."""
        with contextlib.suppress(grpc.aio.AioRpcError):
            await asyncio.wait_for(call.initial_metadata(), 30)

    async def _read(self, call: Any) -> None:
        try:
            async for response in call:
                self.events.extend(response.events)
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.CANCELLED:
                self.error = error

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


async def book_and_cancel(callers: list[Caller], pairs: int, *, parallel: int = 4, notes: str = "") -> list[str]:
    """Create and then delete `pairs` bookings, spread over `callers` and `parallel` concurrent clients."""
    booked: list[str] = []

    async def worker(n: int) -> None:
        for i in range(n, pairs, parallel):
            caller = callers[i % len(callers)]
            booking = await caller.create(provider_id=f"prov-{i % 3}", customer_id=f"cust-{i % 5}", notes=notes)
            await caller.delete(booking.id, reason="test churn")
            booked.append(booking.id)

    await asyncio.gather(*(worker(n) for n in range(parallel)))
    return booked


class Churn:
    """Creates and deletes bookings in the background until stopped; counts the changes it committed.

    With `retry_cancelled`, it does what a careful client does (booking_client retries likewise): a call that
    ends CANCELLED, which this client never asks for, is tried again once. grpc core ends so the calls a server
    had received but not yet handed to the service when it began shutting down (grpc/grpc#41785): they were
    never processed. Creates then carry a request_id, so that even a processed one could not be made twice."""

    def __init__(self, callers: list[Caller], *, retry_cancelled: bool = True) -> None:
        self.callers = callers
        self.retry_cancelled = retry_cancelled
        self.changes = 0
        self.retried = 0  # calls tried again after CANCELLED
        self.failures: list[grpc.aio.AioRpcError] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _call(self, call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await call()
        except grpc.aio.AioRpcError as error:
            if not (self.retry_cancelled and error.code() == grpc.StatusCode.CANCELLED):
                raise
        self.retried += 1
        return await call()

    async def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            caller = self.callers[i % len(self.callers)]
            i += 1
            request_id = uuid.uuid4().hex if self.retry_cancelled else ""
            try:
                booking = await self._call(
                    lambda c=caller, n=i, r=request_id: c.create(  # type: ignore[misc]
                        provider_id="prov-churn", customer_id=f"cust-{n % 4}", request_id=r
                    )
                )
                self.changes += 1
                await self._call(lambda c=caller, b=booking.id: c.delete(b, reason="churn"))  # type: ignore[misc]
                self.changes += 1
            except grpc.aio.AioRpcError as error:
                self.failures.append(error)
            await asyncio.sleep(0.005)

    async def until(self, changes: int) -> None:
        await eventually(lambda: self.changes >= changes, lambda: f"only {self.changes} changes made")

    async def stop(self) -> int:
        self._stop.set()
        assert self._task is not None
        await self._task
        return self.changes


def assert_exactly(subscription: Subscription, committed: list[tuple[str, int, str]]) -> None:
    """The subscription received every committed event once, in stream order, each as committed."""
    assert subscription.ids == [event_id for event_id, _, _ in committed]
    assert [(e.type, e.booking.id) for e in subscription.events] == [(t, b) for _, t, b in committed]


def assert_order_per_booking(subscription: Subscription) -> None:
    kinds: dict[str, list[int]] = defaultdict(list)
    for event in subscription.events:
        kinds[event.booking.id].append(event.type)
    assert all(k == [CREATED, DELETED] for k in kinds.values()), kinds
