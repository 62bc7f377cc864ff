"""A subscriber process for the fault suite: `python -m tests.support.frozen_subscriber ADDRESS COUNT [SUB]` opens
COUNT Subscribe streams on one connection (each as an admin of its own, or all as the user SUB), prints
"subscribed" and reads them until it is stopped (SIGSTOP freezes it as a vanished client would be; SIGKILL makes
it vanish)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterable

import grpc

from booking_api.notify.v1 import notify_pb2, notify_pb2_grpc
from tests.support.helpers import auth


async def main(address: str, count: int, sub: str | None) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = notify_pb2_grpc.NotifyServiceStub(channel)
        callers = [("admin", f"frozen-{i}") if sub is None else ("user", sub) for i in range(count)]
        calls = [stub.Subscribe(notify_pb2.SubscribeRequest(), metadata=auth(*caller)) for caller in callers]
        for call in calls:
            await call.initial_metadata()
        print("subscribed", flush=True)

        async def read(call: AsyncIterable[notify_pb2.SubscribeResponse]) -> None:
            async for _ in call:
                pass

        await asyncio.gather(*(read(call) for call in calls))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None))
