"""The tests' one writer: booking changes made in the background until stopped, or a fixed number of them.

Three mixes of changes, each through booking callers taken in turn (one per booking instance, say):
- "churn": create a booking, then delete it (two changes): the steady traffic of the event tests;
- "create": creates only; with `per_second`, at that steady rate whatever the latency (the realtime tests
  measure from when each create returned, `returned`);
- "mixed": creates, updates, deletes, restores and hard deletes at random, per loop, over that loop's own
  bookings.

A call that fails is kept in `failures` and the writer goes on. With `retry_cancelled` it does what a careful
client does (booking_client retries likewise): a call that ends CANCELLED, which this client never asks for, is
tried again once. grpc core ends so the calls a server had received but not yet handed to the service when it
began shutting down (grpc/grpc#41785): they were never processed. Creates then carry a request_id, so that even
a processed one could not be made twice.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar

import grpc

from booking_api.booking.v1 import booking_pb2
from tests.support.events import eventually
from tests.support.helpers import Caller

T = TypeVar("T")
Mix = Literal["churn", "create", "mixed"]
PROVIDER = "prov-churn"  # every booking's provider: a provider's subscription sees them all
CUSTOMERS = 4  # customers cust-0 .. cust-3, in turn


class Writer:
    def __init__(
        self,
        callers: list[Caller],
        *,
        mix: Mix = "churn",
        loops: int = 1,
        per_second: float | None = None,
        gap: float = 0.005,
        notes: str = "",
        retry_cancelled: bool = True,
    ) -> None:
        assert per_second is None or mix == "create", "a steady rate is for creates"
        self.callers = callers
        self.mix = mix
        self.loops = loops
        self.per_second = per_second
        self.gap = gap  # between one loop's changes
        self.notes = notes  # what new bookings carry (large notes make large events)
        self.retry_cancelled = retry_cancelled
        self.changes = 0  # committed
        self.retried = 0  # calls tried again after CANCELLED
        self.failures: list[grpc.aio.AioRpcError] = []
        self.returned: dict[str, float] = {}  # booking id -> when its create returned
        self.going = asyncio.Event()  # cleared: the loops wait (their calls in flight finish)
        self.going.set()
        self._waiting = 0  # loops waiting for `going`
        self._turn = 0
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        if self.per_second is None:
            self._tasks = [asyncio.create_task(self._loop(n)) for n in range(self.loops)]
        else:
            self._tasks = [asyncio.create_task(self._steady(self.per_second))]

    async def pairs(self, count: int) -> list[str]:
        """Create and then delete `count` bookings over `loops` concurrent loops; the ids, once all are done."""
        booked: list[str] = []

        async def loop(n: int) -> None:
            for _ in range(n, count, self.loops):
                caller = self._next_caller()
                booking = await self.create(caller)
                await self._call(lambda c=caller, b=booking.id: c.delete(b, reason="test churn"))  # type: ignore[misc]
                self.changes += 1
                booked.append(booking.id)

        await asyncio.gather(*(loop(n) for n in range(self.loops)))
        return booked

    async def until(self, changes: int, within: float = 120) -> None:
        await eventually(lambda: self.changes >= changes, lambda: f"only {self.changes} changes made", within)

    async def pause(self) -> None:
        """Stop writing, and return once the calls in flight have finished."""
        self.going.clear()
        await eventually(lambda: self._waiting == self.loops, lambda: f"{self._waiting} of {self.loops} paused")

    async def stop(self) -> int:
        """Stop, once the calls in flight have finished; the number of changes committed."""
        self._stop.set()
        self.going.set()
        await asyncio.gather(*self._tasks)
        return self.changes

    def _next_caller(self) -> Caller:
        self._turn += 1
        return self.callers[self._turn % len(self.callers)]

    async def _call(self, call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await call()
        except grpc.aio.AioRpcError as error:
            if not (self.retry_cancelled and error.code() == grpc.StatusCode.CANCELLED):
                raise
        self.retried += 1
        return await call()

    async def create(self, caller: Caller | None = None) -> booking_pb2.Booking:
        """One booking created (counted, its return time noted), by `caller` or the next in turn."""
        caller, n = caller or self._next_caller(), self._turn
        request_id = uuid.uuid4().hex if self.retry_cancelled else ""
        booking = await self._call(
            lambda: caller.create(
                provider_id=PROVIDER, customer_id=f"cust-{n % CUSTOMERS}", notes=self.notes, request_id=request_id
            )
        )
        self.returned[booking.id] = time.monotonic()
        self.changes += 1
        return booking

    async def _change(self, rng: random.Random, mine: list[booking_pb2.Booking]) -> None:
        """One step of the mix."""
        if self.mix == "create":
            await self.create()
        elif self.mix == "churn":
            caller = self._next_caller()
            booking = await self.create(caller)
            await self._call(lambda: caller.delete(booking.id, reason="churn"))
            self.changes += 1
        else:
            await self._mixed(rng, mine)

    async def _mixed(self, rng: random.Random, mine: list[booking_pb2.Booking]) -> None:
        roll = rng.random()
        caller = self._next_caller()
        if roll < 0.35 or not mine:
            mine.append(await self.create())
            return
        booking = mine[rng.randrange(len(mine))]
        if roll < 0.55:  # delete or restore
            if booking.HasField("delete_time"):
                mine[mine.index(booking)] = await self._call(lambda: caller.restore(booking.id))
            else:
                mine[mine.index(booking)] = await self._call(lambda: caller.delete(booking.id, reason="churn"))
        elif roll < 0.7:  # hard delete
            deleted = [b for b in mine if b.HasField("delete_time")]
            if not deleted:
                return
            await self._call(lambda: caller.hard_delete(deleted[0].id))
            mine.remove(deleted[0])
        elif roll < 0.85:  # update (its notes: the slot stays its own)
            if booking.HasField("delete_time"):
                return
            notes = f"{rng.random():.6f}{self.notes}"[:2000]  # the longest notes a booking may have
            changed = await self._call(lambda: caller.update(booking.id, "notes", notes=notes))
            mine[mine.index(booking)] = changed
        else:  # delete
            if booking.HasField("delete_time"):
                return
            mine[mine.index(booking)] = await self._call(lambda: caller.delete(booking.id, reason="churn"))
        self.changes += 1

    async def _loop(self, n: int) -> None:
        rng = random.Random(n)
        mine: list[booking_pb2.Booking] = []
        while not self._stop.is_set():
            if not self.going.is_set():
                self._waiting += 1
                await self.going.wait()
                self._waiting -= 1
                continue
            try:
                await self._change(rng, mine)
            except grpc.aio.AioRpcError as error:
                self.failures.append(error)
            await asyncio.sleep(self.gap)

    async def _steady(self, per_second: float) -> None:
        """A create every 1/per_second seconds on a fixed schedule, each in its own task (a slow call never delays
        the next)."""

        async def one() -> None:
            try:
                await self.create()
            except grpc.aio.AioRpcError as error:
                self.failures.append(error)

        calls: list[asyncio.Task[None]] = []
        start, k = time.monotonic(), 0
        while not self._stop.is_set():
            delay = start + k / per_second - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            calls.append(asyncio.create_task(one()))
            k += 1
        await asyncio.gather(*calls)


async def book_and_cancel(callers: list[Caller], pairs: int, *, parallel: int = 4, notes: str = "") -> list[str]:
    """Create and then delete `pairs` bookings, spread over `callers` and `parallel` concurrent loops."""
    return await Writer(callers, loops=parallel, notes=notes).pairs(pairs)
