"""The hub and its subscribers, without servers: fan-out, filters, gaps, slow consumers."""

from __future__ import annotations

import asyncio
import time

import pytest

from notify_service.hub import BatchLimits, Event, EventFilter, Hub, Round, Subscriber, cursor_expired, take_batch
from svc_common.errors import OutOfRange, ResourceExhausted, Unavailable
from svc_common.eventstream import EventId
from svc_common.principal import Principal, Role
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
    assert await drain(subscriber) == [b"e1e3"]  # one response of the two events, none for the placeholder
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


async def test_a_waiting_subscriber_is_woken_by_what_it_matches_only() -> None:
    hub = Hub()
    subscriber = Subscriber(EventFilter(ADMIN, customer_id="c1"), None, 10)
    hub.add(subscriber)
    waiting = asyncio.create_task(subscriber.next())
    await asyncio.sleep(0)
    hub.dispatch([event(1, customer="c2")])  # not its customer: nothing to wake for
    await asyncio.sleep(0.01)
    assert not waiting.done()
    hub.dispatch([event(2, customer="c1")])
    async with asyncio.timeout(1):
        assert await waiting == b"e2"


async def test_events_already_seen_while_catching_up_are_skipped_and_positions_follow_the_hub() -> None:
    hub = Hub()
    subscriber = Subscriber(EventFilter(ADMIN), EventId(1002, 2), 10)
    hub.add(subscriber)
    hub.dispatch([event(1), event(2), event(3)])
    assert await drain(subscriber) == [b"e3"]
    assert hub.last == EventId(1003, 3) and subscriber.last == EventId(1003, 3)
    hub.dispatch([])
    assert hub.last == EventId(1003, 3)


async def test_customer_and_provider_filters_narrow_an_admin() -> None:
    hub = Hub()
    by_customer = Subscriber(EventFilter(ADMIN, customer_id="c1"), None, 10)
    by_provider = Subscriber(EventFilter(ADMIN, provider_id="p1"), None, 10)
    hub.add(by_customer)
    hub.add(by_provider)
    hub.dispatch([event(1, customer="c1", provider="p2"), event(2, customer="c2", provider="p1")])
    assert await drain(by_customer) == [b"e1"]
    assert await drain(by_provider) == [b"e2"]


async def test_the_slow_consumer_error_says_how_to_resume() -> None:
    subscriber = Subscriber(EventFilter(ADMIN), None, 1)
    subscriber.offer([event(1)])
    subscriber.offer([event(2)])
    assert isinstance(subscriber.failure, ResourceExhausted)
    assert "more than 1 events behind" in subscriber.failure.message
    subscriber.offer([event(3)])  # a failed subscriber takes nothing more
    assert subscriber.last == EventId(1001, 1)


def test_cursor_expired_names_the_cursor_when_there_is_one() -> None:
    error = cursor_expired(EventId(5, 6))
    assert (error.reason, error.metadata) == ("CURSOR_EXPIRED", {"resume_after": "5-6"})
    assert "ListBookings" in error.message
    assert cursor_expired(None).metadata == {}


async def test_closing_the_hub_ends_every_subscription_and_refuses_new_ones() -> None:
    hub = Hub()
    subscribers = [Subscriber(EventFilter(ADMIN), None, 10) for _ in range(2)]
    for subscriber in subscribers:
        hub.add(subscriber)
    hub.discard(subscribers[1])
    assert hub.subscriber_count == 1
    closing = Unavailable("bye", reason="SHUTTING_DOWN")
    hub.close(closing)
    with pytest.raises(Unavailable):
        await subscribers[0].next()
    with pytest.raises(Unavailable):
        hub.add(Subscriber(EventFilter(ADMIN), None, 10))


def test_errors_say_exactly_how_to_recover() -> None:
    assert cursor_expired(None).message == (
        "events after this cursor are no longer available (trimmed, or lost by Redis); re-read the bookings with "
        "ListBookings and subscribe again without resume_after"
    )
    subscriber = Subscriber(EventFilter(ADMIN), None, 1)
    subscriber.offer([event(1)])
    subscriber.offer([event(2)])
    assert subscriber.failure is not None and subscriber.failure.message == (
        "the subscriber fell more than 1 events behind; resume from the last event_id received"
    )
    assert Hub().last is None


async def test_a_response_carries_what_waits_within_the_limits_in_order_with_no_gap_or_repeat() -> None:
    subscriber = Subscriber(EventFilter(ADMIN), None, 100, BatchLimits(max_events=3, max_bytes=7))
    subscriber.offer([event(n) for n in range(1, 9)])  # payloads e1 .. e8, two bytes each
    responses = await drain(subscriber)
    assert responses == [b"e1e2e3", b"e4e5e6", b"e7e8"]  # three events per response at most (6 <= 7 bytes)
    tight = Subscriber(EventFilter(ADMIN), None, 100, BatchLimits(max_events=100, max_bytes=5))
    tight.offer([event(n) for n in range(1, 6)])
    assert await drain(tight) == [b"e1e2", b"e3e4", b"e5"]  # two per response by size


def test_a_single_event_larger_than_the_byte_limit_still_goes_alone() -> None:
    queue = [b"x" * 10, b"y"]
    assert take_batch(queue, BatchLimits(max_events=10, max_bytes=4)) == b"x" * 10
    assert take_batch(queue, BatchLimits(max_events=10, max_bytes=4)) == b"y"
    assert not queue


def test_each_limit_is_inclusive_and_holds_on_its_own() -> None:
    events = [f"e{n}".encode() for n in range(1, 8)]  # two bytes each
    by_count = list(events)
    assert take_batch(by_count, BatchLimits(max_events=3, max_bytes=1000)) == b"e1e2e3"
    assert by_count == events[3:]  # what was not taken stays, in order
    by_size = list(events)
    assert take_batch(by_size, BatchLimits(max_events=1000, max_bytes=6)) == b"e1e2e3"  # exactly 6 bytes fit
    assert by_size == events[3:]


def test_the_window_serves_exactly_what_follows_a_recent_cursor() -> None:
    hub = Hub(window=5)
    hub.dispatch([event(seq) for seq in range(1, 9)])  # keeps 4..8
    assert [e.id.seq for e in hub.recent_after(EventId(1003, 3), 10) or []] == [4, 5, 6, 7, 8]
    assert [e.id.seq for e in hub.recent_after(EventId(1005, 5), 2) or []] == [6, 7]
    assert hub.recent_after(EventId(1008, 8), 10) == []  # the newest: nothing follows, no Redis read either
    assert hub.recent_after(EventId(1002, 2), 10) is None  # older than the window
    assert hub.recent_after(EventId(1009, 9), 10) is None  # newer than anything dispatched here
    assert hub.recent_after(EventId(77, 5), 10) is None  # same seq, another event: not ours to answer


def test_the_window_restarts_after_a_gap_so_it_never_answers_across_one() -> None:
    hub = Hub(window=10)
    hub.dispatch([event(1), event(2)])
    hub.dispatch([event(5), event(6)])
    assert hub.recent_after(EventId(1002, 2), 10) is None
    assert [e.id.seq for e in hub.recent_after(EventId(1004, 4), 10) or []] == [5, 6]


def test_a_window_of_zero_keeps_nothing() -> None:
    hub = Hub(window=0)
    hub.start_at(EventId(1002, 2), [event(1), event(2)])
    hub.dispatch([event(3)])
    assert hub.recent_after(EventId(1002, 2), 10) is None
    assert hub.last == EventId(1003, 3)


async def write(subscriber: Subscriber) -> bytes:
    """What the servicer does: take the next response, write it (here: nowhere), say it was written."""
    response = await subscriber.next()
    subscriber.written()
    return response


async def test_each_round_is_timed_from_its_read_to_its_first_and_last_write() -> None:
    reported: list[Round] = []
    hub = Hub(on_written=reported.append)
    first, second, other = (Subscriber(EventFilter(ADMIN), None, 10) for _ in range(3))
    elsewhere = Subscriber(EventFilter(ADMIN, customer_id="nobody"), None, 10)  # owes nothing of these rounds
    for subscriber in (first, second, other, elsewhere):
        hub.add(subscriber)
    read_at = time.monotonic()
    hub.dispatch([event(1)], read_at, "redis")
    await write(first)
    assert reported == []  # two subscribers still owe their write
    await asyncio.sleep(0.05)
    await write(second)
    assert reported == []
    hub.discard(other)
    other.release()  # left without writing it: owes nothing any more
    assert len(reported) == 1
    round_ = reported[0]
    assert round_.source == "redis" and round_.first is not None and round_.last is not None
    assert read_at <= round_.first and round_.last - round_.first >= 0.05

    reported.clear()
    hub.dispatch([event(2)], time.monotonic(), "postgres")
    hub.dispatch([event(3)], time.monotonic(), "postgres")
    hub.dispatch([event(4)], time.monotonic(), "postgres")
    assert await write(first) == b"e2e3e4"  # one response carries three rounds: each is settled by it
    assert await write(second) == b"e2e3e4"
    assert len(reported) == 3 and {r.source for r in reported} == {"postgres"}


async def test_a_round_is_settled_only_by_the_response_that_carries_its_last_event() -> None:
    reported: list[Round] = []
    hub = Hub(on_written=reported.append)
    subscriber = Subscriber(EventFilter(ADMIN), None, 10, BatchLimits(max_events=2))
    hub.add(subscriber)
    hub.dispatch([event(1), event(2), event(3)], time.monotonic())
    assert await write(subscriber) == b"e1e2"
    assert reported == []  # its third event is still queued
    assert await write(subscriber) == b"e3"
    assert len(reported) == 1


async def test_a_response_settles_the_rounds_it_completes_and_leaves_the_one_it_splits_owed() -> None:
    reported: list[Round] = []
    hub = Hub(on_written=reported.append)
    subscriber = Subscriber(EventFilter(ADMIN), None, 10, BatchLimits(max_events=3))
    hub.add(subscriber)
    for events in ([event(1)], [event(2)], [event(3), event(4)]):
        hub.dispatch(events, time.monotonic())
    assert await write(subscriber) == b"e1e2e3"
    assert len(reported) == 2  # the first two rounds; the third still has e4 queued
    assert await write(subscriber) == b"e4"
    assert len(reported) == 3


async def test_a_round_nobody_was_written_is_never_reported() -> None:
    reported: list[Round] = []
    hub = Hub(on_written=reported.append)
    subscriber = Subscriber(EventFilter(ADMIN), None, 10)
    hub.add(subscriber)
    hub.dispatch([event(1)], time.monotonic())
    await subscriber.next()  # taken, but the write never ended: the subscription went away
    hub.discard(subscriber)
    subscriber.release()
    assert reported == []


async def test_a_subscriber_ended_as_a_slow_consumer_owes_its_rounds_nothing_more() -> None:
    """Its queue is dropped: the rounds it held are timed by the others' writes, not held until its call ends."""
    reported: list[Round] = []
    hub = Hub(on_written=reported.append)
    fast, slow = Subscriber(EventFilter(ADMIN), None, 1), Subscriber(EventFilter(ADMIN), None, 1)
    hub.add(fast)
    hub.add(slow)
    hub.dispatch([event(1)], time.monotonic())
    await write(fast)
    assert reported == []  # the slow one still owes it
    hub.dispatch([event(2)], time.monotonic())  # the slow one is a full queue behind: ended
    assert isinstance(slow.failure, ResourceExhausted)
    assert len(reported) == 1  # before its call ends (release)
    await write(fast)
    assert len(reported) == 2


async def test_an_event_is_offered_only_to_the_subscribers_it_may_concern(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker's cost per event is its deliveries', not its subscribers': at the hub's position, a subscriber
    is found by its customer, provider or booking, or as one that may match anything."""
    asked: list[EventFilter] = []
    matches = EventFilter.matches

    def counted(self: EventFilter, event: Event) -> bool:
        asked.append(self)
        return matches(self, event)

    monkeypatch.setattr(EventFilter, "matches", counted)
    hub = Hub()
    users = [Subscriber(EventFilter(Scope(customer_id=f"u{i}", provider_id=None)), None, 10) for i in range(1000)]
    admin = Subscriber(EventFilter(ADMIN), None, 10)
    for subscriber in (*users, admin):
        hub.add(subscriber)
    hub.dispatch([event(1, customer="u7", provider="p1")])
    assert sorted(f.scope.customer_id or "admin" for f in asked) == ["admin", "u7"]
    assert await drain(users[7]) == [b"e1"] and await drain(admin) == [b"e1"]
    assert await drain(users[8]) == []


async def test_a_subscriber_passed_over_keeps_its_place_and_sees_no_gap() -> None:
    hub = Hub()
    mine = Subscriber(EventFilter(Scope(customer_id="u1", provider_id=None)), None, 10)
    hub.add(mine)
    hub.dispatch([event(1, customer="u2"), event(2, customer="u2")])
    assert mine.last == EventId(1002, 2)  # resuming from here misses nothing
    hub.dispatch([event(3, customer="u1")])
    assert await drain(mine) == [b"e3"]
    assert mine.failure is None and mine.last == EventId(1003, 3)


async def test_a_seam_reaches_subscribers_that_were_passed_over_at_their_place() -> None:
    hub = Hub()
    mine = Subscriber(EventFilter(Scope(customer_id="u1", provider_id=None)), None, 10)
    hub.add(mine)
    hub.dispatch([event(1, customer="u2")])  # routed: not offered to it
    jump = 2 + 1_000_000_000
    seam = Event(EventId(1000 + jump, jump), "", "", "", None, seam=True)
    hub.dispatch([event(2, customer="u2"), seam, Event(EventId(2000 + jump, jump + 1), "u1", "p", "b", b"after")])
    assert await drain(mine) == [b"after"]
    assert mine.failure is None and mine.last == EventId(2000 + jump, jump + 1)
    hub.dispatch([Event(EventId(2001 + jump, jump + 2), "u1", "p", "b", b"next")])  # routed again
    assert await drain(mine) == [b"next"]


async def test_a_subscriber_catching_up_is_offered_everything_until_it_reaches_the_hub() -> None:
    hub = Hub()
    hub.dispatch([event(1), event(2), event(3)])
    behind = Subscriber(EventFilter(Scope(customer_id="u1", provider_id=None)), EventId(1004, 4), 10)
    hub.add(behind)  # history took it past the hub: the events up to its place are passed, not delivered twice
    hub.dispatch([event(4, customer="u1")])
    assert await drain(behind) == []
    hub.dispatch([event(5, customer="u1"), event(6, customer="u2")])
    assert await drain(behind) == [b"e5"] and behind.last == EventId(1006, 6)
    hub.dispatch([event(8, customer="u2")])  # a gap ends it, routed or not
    with pytest.raises(OutOfRange):
        async with asyncio.timeout(1):
            await behind.next()
