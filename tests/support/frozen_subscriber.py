"""A subscriber process for the fault suite: `python -m tests.support.frozen_subscriber ADDRESS COUNT` opens COUNT
Subscribe streams on one connection, prints "subscribed" and reads them until it is stopped (SIGSTOP freezes it
as a vanished client would be)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterable

import grpc

from booking_api.notify.v1 import notify_pb2, notify_pb2_grpc
from tests.support.helpers import auth


async def main(address: str, count: int) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = notify_pb2_grpc.NotifyServiceStub(channel)
        calls = [
            stub.Subscribe(notify_pb2.SubscribeRequest(), metadata=auth("admin", f"frozen-{i}")) for i in range(count)
        ]
        for call in calls:
            await call.initial_metadata()
        print("subscribed", flush=True)

        async def read(call: AsyncIterable[notify_pb2.SubscribeResponse]) -> None:
            async for _ in call:
                pass

        await asyncio.gather(*(read(call) for call in calls))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
