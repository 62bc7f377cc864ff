"""The hub and its subscribers, without servers: fan-out, filters, gaps, slow consumers."""

from __future__ import annotations

import asyncio

import pytest

from notify_service.hub import Event, EventFilter, Hub, Subscriber
from svc_common.auth import Principal, Role
from svc_common.errors import OutOfRange, ResourceExhausted
from svc_common.eventstream import EventId
from svc_common.scope import Scope

ADMIN = Scope.of(Principal("root", "root", Role.ADMIN))


def event(seq: int, *, customer: str = "c", provider: str = "p", booking: str = "b", payload: bool = True) -> Event:
    return Event(EventId(1000 + seq, seq), customer, provider, booking, f"e{seq}".encode() if payload else None)


async def drain(subscriber: Subscriber) -> list[bytes]:
    got = []
    while True:
        try:
            async with asyncio.timeout(0.05):
                got.append(await subscriber.next())
        except TimeoutError:
            return got


async def test_a_slow_consumer_is_ended_and_released_by_the_hub_at_once() -> None:
    hub = Hub()
    slow, fast = Subscriber(EventFilter(ADMIN), None, max_queue=2), Subscriber(EventFilter(ADMIN), None, 2)
    hub.add(slow)
    hub.add(fast)
    for seq in range(1, 5):
        hub.dispatch([event(seq)])
        assert await fast.next() == f"e{seq}".encode()
    assert hub.subscriber_count == 1
    with pytest.raises(ResourceExhausted) as ended:
        await slow.next()
    assert ended.value.reason == "SLOW_CONSUMER"


async def test_a_gap_in_the_live_stream_ends_the_subscriber_with_out_of_range() -> None:
    hub = Hub()
    subscriber = Subscriber(EventFilter(ADMIN), None, 10)
    hub.add(subscriber)
    hub.dispatch([event(1), event(2)])
    hub.dispatch([event(4)])
    with pytest.raises(OutOfRange) as ended:  # what was queued is dropped too: the client resumes from its cursor
        await subscriber.next()
    assert ended.value.reason == "CURSOR_EXPIRED"
    assert ended.value.metadata == {"resume_after": str(EventId(1002, 2))}
    assert hub.subscriber_count == 0


async def test_an_entry_without_an_event_advances_the_position_and_is_never_delivered() -> None:
    hub = Hub()
    subscriber = Subscriber(EventFilter(ADMIN), None, 10)
    hub.add(subscriber)
    hub.dispatch([event(1), event(2, payload=False), event(3)])
    assert await drain(subscriber) == [b"e1", b"e3"]
    assert subscriber.failure is None and subscriber.last == EventId(1003, 3)


async def test_scope_and_filters_decide_what_each_subscriber_gets() -> None:
    hub = Hub()
    user = Subscriber(EventFilter(Scope.of(Principal("u1", "u", Role.USER))), None, 10)
    provider = Subscriber(EventFilter(Scope.of(Principal("u1", "u", Role.PROVIDER))), None, 10)
    one = Subscriber(EventFilter(ADMIN, booking_id="b2"), None, 10)
    for subscriber in (user, provider, one):
        hub.add(subscriber)
    hub.dispatch(
        [
            event(1, customer="u1", provider="p9", booking="b1"),
            event(2, customer="c9", provider="u1", booking="b2"),
            event(3, customer="c9", provider="p9", booking="b3"),
        ]
    )
    assert await drain(user) == [b"e1"]
    assert await drain(provider) == [b"e2"]
    assert await drain(one) == [b"e2"]
