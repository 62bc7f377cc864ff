"""No caller can make a notify instance hold unbounded streams: Subscribe streams are bounded per caller (users
and providers, admins apart) and in all, health Watch streams per instance, and calls per connection; past a bound
the call is refused with RESOURCE_EXHAUSTED `TOO_MANY_STREAMS` and the bound, and the count drops as streams
end, including those of a client that vanished. The client's watch() waits seconds between refused tries."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from booking_api.notify.v1 import notify_pb2, notify_pb2_grpc
from booking_client import BookingClient
from tests.support.events import EventSystem
from tests.support.helpers import auth, error_infos, expect_error, token, uid
from tests.support.servers import PROJECT, ServiceProcess

DOMAIN = "notify.v1"
BOUNDS = {
    "SUBSCRIBE_MAX_STREAMS_PER_CALLER": "3",
    "SUBSCRIBE_MAX_STREAMS_PER_ADMIN": "5",
    "SUBSCRIBE_MAX_STREAMS": "10",
    "HEALTH_MAX_WATCHES": "2",
}


def on_notify(system: EventSystem, channels: list[grpc.aio.Channel], **env: str) -> tuple[ServiceProcess, Any]:
    """A notify instance with settings `env`, and a channel to it."""
    notify = system.notify(**env)
    channel = grpc.aio.insecure_channel(notify.address)
    channels.append(channel)
    return notify, channel


def subscribe(channel: grpc.aio.Channel, role: str, sub: str) -> Any:
    return notify_pb2_grpc.NotifyServiceStub(channel).Subscribe(notify_pb2.SubscribeRequest(), metadata=auth(role, sub))


async def accepted(call: Any) -> bool:
    """Whether the server accepted the stream: Subscribe sends its initial metadata (with the request id) once
    accepted; a refused call ends with trailers only."""
    return "x-request-id" in dict(await asyncio.wait_for(call.initial_metadata(), 30))


async def opened(channel: grpc.aio.Channel, role: str, sub: str, count: int = 1) -> list[Any]:
    """`count` accepted streams of one caller."""
    calls = [subscribe(channel, role, sub) for _ in range(count)]
    for call in calls:
        assert await accepted(call), f"refused: {await call.code()} {await call.details()}"
    return calls


async def refused(channel: grpc.aio.Channel, role: str, sub: str, *, bound: int, scope: str) -> None:
    error = await expect_error(
        subscribe(channel, role, sub).read(), grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_STREAMS", DOMAIN
    )
    assert dict(error_infos(error)[0].metadata) == {"bound": str(bound), "scope": scope}


async def accepted_again(channel: grpc.aio.Channel, role: str, sub: str) -> Any:
    """A stream of `sub` accepted once the count has dropped (the server notices ended streams asynchronously)."""
    for _ in range(300):
        call = subscribe(channel, role, sub)
        if await accepted(call):
            return call
        assert await call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, await call.details()
        await asyncio.sleep(0.1)
    raise AssertionError(f"{sub} stayed at its bound")


@pytest.mark.timeout(120)
async def test_subscribe_streams_are_bounded_per_caller_per_admin_and_in_all(
    system: EventSystem, channels: list[grpc.aio.Channel]
) -> None:
    _notify, channel = on_notify(system, channels, **BOUNDS)
    alice, bob, ops = uid("alice"), uid("bob"), uid("ops")

    alices = await opened(channel, "user", alice, 3)
    await refused(channel, "user", alice, bound=3, scope="caller")
    await opened(channel, "provider", bob, 3)  # the bound is per caller
    await refused(channel, "provider", bob, bound=3, scope="caller")
    await opened(channel, "admin", ops, 4)  # an admin's bound is its own (5), but all together are at 10
    await refused(channel, "admin", ops, bound=10, scope="instance")
    await refused(channel, "admin", uid("other-admin"), bound=10, scope="instance")

    alices[0].cancel()  # a stream that ends gives its place back
    await accepted_again(channel, "user", alice)
    await refused(channel, "user", alice, bound=3, scope="caller")


@pytest.mark.timeout(120)
async def test_an_admin_has_a_bound_of_its_own_and_zero_means_none(
    system: EventSystem, channels: list[grpc.aio.Channel]
) -> None:
    _notify, channel = on_notify(
        system, channels, SUBSCRIBE_MAX_STREAMS_PER_CALLER="0", SUBSCRIBE_MAX_STREAMS_PER_ADMIN="4"
    )
    await opened(channel, "user", uid("user"), 150)  # past the default of 100: no bound for users here
    ops = uid("ops")
    await opened(channel, "admin", ops, 4)
    await refused(channel, "admin", ops, bound=4, scope="caller")


@pytest.mark.timeout(120)
async def test_the_streams_of_a_client_that_vanished_stop_counting(
    system: EventSystem, channels: list[grpc.aio.Channel]
) -> None:
    notify, channel = on_notify(system, channels, **BOUNDS)
    carol = uid("carol")
    client = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.support.frozen_subscriber",
        notify.address,
        "3",
        carol,
        cwd=PROJECT,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert client.stdout is not None
        assert await asyncio.wait_for(client.stdout.readline(), 30) == b"subscribed\n"
        await refused(channel, "user", carol, bound=3, scope="caller")
    finally:
        client.send_signal(signal.SIGKILL)
        await client.wait()
    await accepted_again(channel, "user", carol)
    await opened(channel, "user", carol, 2)


@pytest.mark.timeout(120)
async def test_health_watch_streams_are_bounded_and_check_still_answers(
    system: EventSystem, channels: list[grpc.aio.Channel]
) -> None:
    _notify, channel = on_notify(system, channels, **BOUNDS)
    health = health_pb2_grpc.HealthStub(channel)
    watches = [health.Watch(health_pb2.HealthCheckRequest(service="")) for _ in range(2)]
    for watch in watches:
        assert (await asyncio.wait_for(watch.read(), 30)).status == health_pb2.HealthCheckResponse.SERVING
    error = await expect_error(
        health.Watch(health_pb2.HealthCheckRequest(service="")).read(),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "TOO_MANY_STREAMS",
        DOMAIN,
    )
    assert dict(error_infos(error)[0].metadata) == {"bound": "2", "scope": "health"}
    assert (
        await health.Check(health_pb2.HealthCheckRequest(service=""))
    ).status == health_pb2.HealthCheckResponse.SERVING
    watches[0].cancel()

    async def watch_accepted() -> bool:
        try:
            watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
            await asyncio.wait_for(watch.read(), 30)
            watch.cancel()
            return True
        except grpc.aio.AioRpcError:
            return False

    for _ in range(300):
        if await watch_accepted():
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the health watch bound did not drop")


@pytest.mark.timeout(120)
async def test_a_connection_past_max_concurrent_streams_queues_its_calls(
    system: EventSystem, channels: list[grpc.aio.Channel]
) -> None:
    notify = system.notify(MAX_CONCURRENT_STREAMS="2")
    own_connection = [("grpc.use_local_subchannel_pool", 1)]  # channels to one address share one otherwise
    channel = grpc.aio.insecure_channel(notify.address, options=own_connection)
    channels.append(channel)
    first = await opened(channel, "user", uid("u1"))
    await opened(channel, "user", uid("u2"))
    third = subscribe(channel, "user", uid("u3"))
    # Held by the client until a stream of this connection ends (no timing is asserted: a slow machine only
    # makes this wait longer).
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.shield(third.initial_metadata()), 1.0)
    other = grpc.aio.insecure_channel(notify.address, options=own_connection)  # another connection is not held
    channels.append(other)
    await opened(other, "user", uid("u4"))
    first[0].cancel()
    assert await accepted(third)


@pytest.mark.timeout(120)
async def test_watch_waits_seconds_between_tries_refused_for_too_many_streams(
    system: EventSystem, channels: list[grpc.aio.Channel]
) -> None:
    notify = system.notify(SUBSCRIBE_MAX_STREAMS_PER_CALLER="1")
    booking = system.booking()
    channel = grpc.aio.insecure_channel(notify.address)
    channels.append(channel)
    dave = uid("dave")
    (held,) = await opened(channel, "user", dave)
    async with BookingClient(booking.address, notify.address, token=token("user", dave)) as client:
        watch = client.watch()
        reading = asyncio.create_task(anext(aiter(watch)))
        try:
            await asyncio.sleep(2.5)
            tries = notify.log().count("TOO_MANY_STREAMS")
            # Refused tries wait 0.5-1 s, then 1-2 s: at most 3 in 2.5 s (the general backoff, from 50 ms, made 7+).
            assert 1 <= tries <= 3, f"{tries} refused tries in 2.5 s:\n{notify.log()}"
            held.cancel()
            await asyncio.wait_for(watch.started.wait(), 60)
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading
            await watch.aclose()
