"""Probes and connection ageing: `liveness` stays SERVING while the process runs; MAX_CONNECTION_AGE_SECONDS
closes client connections so they rebalance, unary calls carry on, and a stream ended that way ends with
UNAVAILABLE and resumes without a gap."""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2

from tests.support.events import EventSystem, Subscription, admin_on, assert_exactly
from tests.support.helpers import uid
from tests.support.writer import book_and_cancel

SERVING = health_pb2.HealthCheckResponse.SERVING
AGED = {"MAX_CONNECTION_AGE_SECONDS": "1", "MAX_CONNECTION_AGE_GRACE_SECONDS": "1"}


async def test_an_aged_connection_ends_a_stream_with_unavailable_and_unary_calls_never_fail(
    system: EventSystem,
) -> None:
    booking, notifier = system.booking(**AGED), system.notify(**AGED)
    channels: list[grpc.aio.Channel] = []
    try:
        admin = await admin_on(booking, channels)
        subscription = Subscription("admin", uid("admin"))
        await subscription.open(notifier.address)
        # Calls on one channel for ~4 s, through several connection ages: every one succeeds.
        await book_and_cancel([admin], 2)
        for _ in range(20):
            await book_and_cancel([admin], 1)
            await asyncio.sleep(0.2)
        error = await subscription.wait_error(within=15)
        assert error.code() == grpc.StatusCode.UNAVAILABLE, error
        committed = await system.wait_relayed(44)
        await subscription.open(notifier.address, resume=True)
        await subscription.wait_for(committed[-1][0])
        assert_exactly(subscription, committed)
        await subscription.close()
    finally:
        for channel in channels:
            await channel.close()


def test_liveness_is_serving_on_both_services(system: EventSystem) -> None:
    """(Readiness going NOT_SERVING while liveness stays SERVING is in tests/system/test_faults.py.)"""
    assert system.booking().health("liveness") == SERVING
    assert system.notify().health("liveness") == SERVING
