"""A stream lives no longer than the token that opened it: Subscribe ends with UNAUTHENTICATED `TOKEN_EXPIRED` when
the token's `exp` plus the leeway (5 s) passes, as a new call with it would be refused, while streams opened with
other tokens go on; `watch()` given a token callable subscribes again with a fresh token from its cursor, and
misses or repeats nothing across the refreshes.

Tokens here are minted already expired by up to the leeway (`ttl` below 0), so they are accepted for a second or
two: the expiry is real, on the services' clock, and the tests wait only that long."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from booking_api.notify.v1 import notify_pb2, notify_pb2_grpc
from booking_client import BookingClient
from tests.support.events import NOTIFY_DOMAIN, EventSystem, admin_on, eventually
from tests.support.helpers import assert_status, auth, token, uid

pytestmark = pytest.mark.timeout(120)

LEEWAY = 5  # svc_common.auth.TokenVerifier's


async def test_a_stream_ends_when_the_token_that_opened_it_expires_and_others_go_on(
    system: EventSystem, channels: list[grpc.aio.Channel]
) -> None:
    admin = await admin_on(system.booking(), channels)
    notify = system.notify()
    provider = uid("prov")
    short = token("admin", uid("short"), ttl=-(LEEWAY - 2))  # accepted for 2 more seconds
    async with grpc.aio.insecure_channel(notify.address) as channel:
        stub = notify_pb2_grpc.NotifyServiceStub(channel)
        request = notify_pb2.SubscribeRequest(provider_id=provider)
        expiring = stub.Subscribe(request, metadata=(("authorization", f"Bearer {short}"),), timeout=60)
        lasting = stub.Subscribe(request, metadata=auth("admin", uid("long")), timeout=60)
        await expiring.initial_metadata()
        await lasting.initial_metadata()
        opened = time.monotonic()
        before = await admin.create(provider_id=provider, customer_id="cust")
        got: list[str] = []
        with pytest.raises(grpc.aio.AioRpcError) as ended_with:
            async for response in expiring:
                got += [event.booking.id for event in response.events]
        ended = time.monotonic() - opened
        assert got == [before.id]
        error = ended_with.value
        assert_status(error, grpc.StatusCode.UNAUTHENTICATED, "TOKEN_EXPIRED", domain=NOTIFY_DOMAIN)
        assert "fresh token" in (error.details() or "")
        assert ended < 30, f"the stream went on {ended:.0f} s after its token expired"

        after = await admin.create(provider_id=provider, customer_id="cust")
        seen = []
        async for response in lasting:
            seen += [event.booking.id for event in response.events]
            if after.id in seen:
                break
        assert seen == [before.id, after.id]  # the other stream went on
        lasting.cancel()

        refused = stub.Subscribe(request, metadata=(("authorization", f"Bearer {short}"),), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as again:
            await refused.read()
        assert_status(again.value, grpc.StatusCode.UNAUTHENTICATED, "TOKEN_EXPIRED", domain=NOTIFY_DOMAIN)


async def test_watch_with_a_token_callable_goes_on_across_expiries_missing_and_repeating_nothing(
    system: EventSystem, channels: list[grpc.aio.Channel]
) -> None:
    admin = await admin_on(system.booking(), channels)
    notify = system.notify()
    provider = uid("prov")
    handed: list[str] = []

    def fresh() -> str:  # each token is accepted for about 1.5 s
        handed.append(token("admin", "watcher", ttl=-(LEEWAY - 1)))
        return handed[-1]

    made: list[str] = []
    async with BookingClient(notify.address, notify.address, token=fresh) as client:
        watch = client.watch(provider_id=provider)
        got: list[str] = []

        async def read() -> None:
            async for event in watch:
                got.append(event.booking.id)

        reading = asyncio.create_task(read())
        try:
            await asyncio.wait_for(watch.started.wait(), 30)
            deadline = time.monotonic() + 6  # several expiries
            while time.monotonic() < deadline:
                made.append((await admin.create(provider_id=provider, customer_id="cust")).id)
                await asyncio.sleep(0.05)
            await eventually(
                lambda: len(got) >= len(made) or reading.done(), lambda: f"{len(got)} of {len(made)} events"
            )
            assert not reading.done(), reading.exception()
        finally:
            reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)
    assert got == made  # every one, once, in order
    assert watch.resumes >= 2, f"the watch resumed {watch.resumes} times: the tokens did not expire under it"
