"""Change events end to end: real booking_service and notify_service processes, a private Redis and PostgreSQL.

What was committed is read back from the outbox table (each change with its stream position), and every
subscriber must end up with exactly those events: none missing, none repeated, in stream order.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2

from booking_api.booking.v1 import events_pb2
from tests.support.events import (
    NOTIFY_DOMAIN,
    EventSystem,
    Subscription,
    admin_on,
    assert_exactly,
    assert_order_per_booking,
    eventually,
)
from tests.support.helpers import assert_status, fresh_slot, uid
from tests.support.writer import Writer, book_and_cancel

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
async def subscriptions() -> AsyncIterator[Callable[[str, str], Subscription]]:
    """subscription(role, sub) -> a Subscription closed at the end of the test."""
    made: list[Subscription] = []

    def make(role: str, sub: str) -> Subscription:
        made.append(Subscription(role, sub))
        return made[-1]

    yield make
    for subscription in made:
        await subscription.close()


async def test_changes_through_either_booking_instance_reach_subscribers_on_both_notify_instances(
    system: EventSystem,
    subscriptions: Callable[[str, str], Subscription],
    channels: list[grpc.aio.Channel],
) -> None:
    # One of each on either event loop (EVENT_LOOP), each instance saying which it runs on.
    bookings = [system.booking(EVENT_LOOP="asyncio"), system.booking(EVENT_LOOP="uvloop")]
    notifiers = [system.notify(EVENT_LOOP="asyncio"), system.notify(EVENT_LOOP="uvloop")]
    for process, loop in zip([*bookings, *notifiers], ["asyncio", "uvloop"] * 2, strict=True):
        said = f"event loop {loop}"
        await eventually(lambda p=process, s=said: s in p.log(), lambda p=process: p.log_tail())  # type: ignore[misc]
    watchers = [subscriptions("admin", uid("ops")) for _ in notifiers]
    for watcher, notifier in zip(watchers, notifiers, strict=True):
        await watcher.open(notifier.address)
    callers = [await admin_on(b, channels) for b in bookings]

    booked = await book_and_cancel(callers, 30)

    committed = await system.wait_relayed(2 * len(booked))
    assert [event_id.split("-")[1] for event_id, _, _ in committed] == [str(n) for n in range(1, 61)]
    for watcher in watchers:
        await watcher.wait_for(committed[-1][0])
        assert_exactly(watcher, committed)
        assert_order_per_booking(watcher)
        assert {e.booking.id for e in watcher.events} == set(booked)

    latecomer = subscriptions("admin", uid("late"))
    await latecomer.open(notifiers[0].address, filters={"resume_after": "0-0"})  # the whole history
    await latecomer.wait_for(committed[-1][0])
    assert_exactly(latecomer, committed)


async def test_an_update_reaches_its_customers_and_providers_streams_as_updated_with_the_new_state(
    system: EventSystem,
    subscriptions: Callable[[str, str], Subscription],
    channels: list[grpc.aio.Channel],
) -> None:
    notifier = system.notify()
    alice, prov = uid("alice"), uid("prov")
    streams = {"alice": subscriptions("user", alice), "prov": subscriptions("provider", prov)}
    streams["bob"] = subscriptions("user", uid("bob"))
    for stream in streams.values():
        await stream.open(notifier.address)
    admin = await admin_on(system.booking(), channels)
    made = await admin.create(provider_id=prov, customer_id=alice)
    start, end = fresh_slot()
    moved = await admin.move(made.id, start, end)
    marker = await admin.create(provider_id=prov, customer_id=streams["bob"].sub)  # bob's, and the provider's
    committed = await system.wait_relayed(3)
    for name in ("prov", "bob"):
        await streams[name].wait_for(committed[-1][0])
    await streams["alice"].wait_for(committed[1][0])
    for name in ("alice", "prov"):
        updated = [e for e in streams[name].events if e.type == events_pb2.BOOKING_EVENT_TYPE_UPDATED]
        assert [e.booking for e in updated] == [moved], name
        assert updated[0].actor.id == admin.id
    assert [e.booking.id for e in streams["bob"].events] == [marker.id]


async def test_a_subscriber_that_stops_reading_is_ended_while_another_gets_every_event(
    system: EventSystem,
    subscriptions: Callable[[str, str], Subscription],
    channels: list[grpc.aio.Channel],
) -> None:
    booking = system.booking()
    notifier = system.notify()  # the default queue: 1000 events
    reader, sleeper = subscriptions("admin", uid("reader")), subscriptions("admin", uid("sleeper"))
    await reader.open(notifier.address)
    # The sleeper's client does not read: its HTTP/2 window (64 KiB, no BDP growth) fills with ~2.3 KB events,
    # then its server-side queue.
    stalled = await sleeper.open(notifier.address, read=False, options=[("grpc.http2.bdp_probe", 0)])
    caller = await admin_on(booking, channels)
    await book_and_cancel([caller], 600, parallel=8, notes="n" * 2000)

    committed = await system.wait_relayed(1200)
    await reader.wait_for(committed[-1][0])
    assert_exactly(reader, committed)

    received: list[str] = []
    # A deadline: with a broken slow-consumer bound this stream would never end.
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        async with asyncio.timeout(120):
            async for response in stalled:
                received.extend(event.event_id for event in response.events)
    assert_status(ended.value, grpc.StatusCode.RESOURCE_EXHAUSTED, "SLOW_CONSUMER", NOTIFY_DOMAIN)
    assert 0 < len(received) < len(committed)
    assert received == [event_id for event_id, _, _ in committed[: len(received)]]


async def test_notify_instance_ends_streams_with_unavailable_on_sigterm_and_clients_resume_elsewhere(
    system: EventSystem,
    subscriptions: Callable[[str, str], Subscription],
    channels: list[grpc.aio.Channel],
) -> None:
    booking = system.booking()
    leaving, staying = system.notify(), system.notify()
    watcher = subscriptions("admin", uid("ops"))
    await watcher.open(leaving.address)
    caller = await admin_on(booking, channels)
    await book_and_cancel([caller], 5)
    committed = await system.wait_relayed(10)
    await watcher.wait_for(committed[-1][0])

    leaving.signal(signal.SIGTERM)
    error = await watcher.wait_error()
    assert_status(error, grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN", NOTIFY_DOMAIN)
    assert leaving.wait(timeout=30) == 0

    await book_and_cancel([caller], 5)
    await watcher.open(staying.address, resume=True)
    committed = await system.wait_relayed(20)
    await watcher.wait_for(committed[-1][0])
    assert_exactly(watcher, committed)


async def test_subscribers_of_a_killed_notify_instance_resume_on_the_other_with_nothing_missing_or_repeated(
    system: EventSystem,
    subscriptions: Callable[[str, str], Subscription],
    channels: list[grpc.aio.Channel],
) -> None:
    booking = system.booking()
    doomed, survivor = system.notify(), system.notify()
    watchers = [subscriptions("admin", uid("ops")), subscriptions("provider", "prov-churn")]
    for watcher in watchers:
        await watcher.open(doomed.address)
    churn = Writer([await admin_on(booking, channels)])
    churn.start()
    await churn.until(20)
    await eventually(lambda: all(len(w.events) >= 10 for w in watchers), lambda: "no events before the kill")

    doomed.signal(signal.SIGKILL)
    for watcher in watchers:
        error = await watcher.wait_error()
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        await churn.until(churn.changes + 10)  # changes keep coming while the client is away
        await watcher.open(survivor.address, resume=True)

    await churn.until(churn.changes + 20)
    committed = await system.wait_relayed(await churn.stop())
    assert not churn.failures
    for watcher in watchers:
        await watcher.wait_for(committed[-1][0])
        assert_exactly(watcher, committed)
        assert_order_per_booking(watcher)


async def test_redis_stopped_and_started_during_steady_changes_every_change_reaches_every_subscriber(
    system: EventSystem,
    subscriptions: Callable[[str, str], Subscription],
    channels: list[grpc.aio.Channel],
) -> None:
    booking = system.booking()
    notifiers = [system.notify(), system.notify()]
    watchers = [subscriptions("admin", uid("ops")) for _ in notifiers]
    for watcher, notifier in zip(watchers, notifiers, strict=True):
        await watcher.open(notifier.address)
    churn = Writer([await admin_on(booking, channels)])
    churn.start()
    await churn.until(20)

    system.redis.stop()
    before = churn.changes
    await churn.until(before + 30)  # bookings are still served; their events wait in the outbox
    await eventually(lambda: booking.health("events") == NOT_SERVING, lambda: "booking health ignores Redis")
    assert booking.health() == SERVING
    system.redis.start()

    await churn.until(churn.changes + 20)
    committed = await system.wait_relayed(await churn.stop())
    assert not churn.failures
    for watcher in watchers:
        await watcher.wait_for(committed[-1][0], within=60)
        assert_exactly(watcher, committed)  # the stream stayed open: a delay, not a gap
        assert_order_per_booking(watcher)
    await eventually(lambda: booking.health("events") == SERVING, lambda: "booking health did not recover")


async def test_after_redis_lost_its_data_an_old_cursor_gives_out_of_range_never_a_gap(
    system: EventSystem,
    subscriptions: Callable[[str, str], Subscription],
    channels: list[grpc.aio.Channel],
) -> None:
    booking, notifier = system.booking(), system.notify()
    live, returning = subscriptions("admin", uid("live")), subscriptions("admin", uid("returning"))
    await live.open(notifier.address)
    await returning.open(notifier.address)
    caller = await admin_on(booking, channels)
    await book_and_cancel([caller], 3)
    committed = await system.wait_relayed(6)
    await returning.wait_for(committed[-1][0])
    await returning.close()  # goes away after event 6
    await book_and_cancel([caller], 3)
    await live.wait_for((await system.wait_relayed(12))[-1][0])

    await system.flush_redis()  # events 7-12 are gone from Redis
    await book_and_cancel([caller], 3)
    committed = await system.wait_relayed(18)
    started_after = system.notify()  # its memory of recent events comes from Redis: 13-18 only

    # The instance that was running throughout still holds 7-12 among its recent events: nothing is lost there.
    await returning.open(notifier.address, resume=True)
    await returning.wait_for(committed[-1][0])
    assert_exactly(returning, committed)
    # Where they are gone, the cursor is refused: never a gap.
    returning.events = returning.events[:6]
    error = await expect_stream_error(returning, started_after.address)
    assert_status(error, grpc.StatusCode.OUT_OF_RANGE, "CURSOR_EXPIRED", NOTIFY_DOMAIN)
    whole_history = subscriptions("admin", uid("history"))
    await whole_history.open(started_after.address, filters={"resume_after": "0-0"})
    error = await whole_history.wait_error()
    assert_status(error, grpc.StatusCode.OUT_OF_RANGE, "CURSOR_EXPIRED", NOTIFY_DOMAIN)
    # A subscriber connected throughout missed nothing: the stream continues where it was.
    await live.wait_for(committed[-1][0])
    assert_exactly(live, committed)


async def expect_stream_error(subscription: Subscription, address: str) -> grpc.aio.AioRpcError:
    await subscription.open(address, resume=True)
    return await subscription.wait_error()


async def test_another_booking_instance_takes_over_relaying_when_the_relaying_one_dies(
    system: EventSystem,
    subscriptions: Callable[[str, str], Subscription],
    channels: list[grpc.aio.Channel],
) -> None:
    bookings = [system.booking(), system.booking()]
    watcher = subscriptions("admin", uid("ops"))
    await watcher.open(system.notify().address)
    callers = [await admin_on(b, channels) for b in bookings]
    await book_and_cancel(callers, 5)
    await eventually(
        lambda: any("relaying change events" in b.log() for b in bookings), lambda: "no instance says it relays"
    )
    relaying = [i for i, b in enumerate(bookings) if "relaying change events" in b.log()]
    assert len(relaying) == 1, "exactly one instance relays"
    relay = relaying[0]

    bookings[relay].signal(signal.SIGKILL)
    bookings[relay].wait()
    await book_and_cancel([callers[1 - relay]], 5)

    committed = await system.wait_relayed(20)
    await watcher.wait_for(committed[-1][0])
    assert_exactly(watcher, committed)
    survivor = bookings[1 - relay]
    await eventually(lambda: "relaying change events" in survivor.log(), survivor.log_tail, within=10)


async def test_a_cursor_older_than_the_retained_history_is_out_of_range(
    system: EventSystem,
    subscriptions: Callable[[str, str], Subscription],
    channels: list[grpc.aio.Channel],
) -> None:
    # Retention by count keeps at least the last 10 events (Redis trims whole stream nodes of 100 entries); the
    # notify instance remembers as few (an instance remembering more would serve the early cursor from memory).
    booking = system.booking(EVENT_STREAM_MAX_LEN="10")
    notifier = system.notify(SUBSCRIBE_HISTORY_WINDOW="10")
    early = subscriptions("admin", uid("early"))
    await early.open(notifier.address)
    caller = await admin_on(booking, channels)
    await book_and_cancel([caller], 1)
    committed = await system.wait_relayed(2)
    await early.wait_for(committed[0][0])
    await early.close()  # its last event is the very first one

    await book_and_cancel([caller], 150)
    committed = await system.wait_relayed(302)
    recent = subscriptions("admin", uid("recent"))
    await recent.open(notifier.address, filters={"resume_after": committed[-5][0]})
    await recent.wait_for(committed[-1][0])
    assert recent.ids == [event_id for event_id, _, _ in committed[-4:]]  # the last 10 are retained

    error = await expect_stream_error(early, notifier.address)
    assert_status(error, grpc.StatusCode.OUT_OF_RANGE, "CURSOR_EXPIRED", NOTIFY_DOMAIN)


async def test_a_subscriber_that_goes_away_while_the_server_writes_to_it_ends_cancelled_not_as_an_error(
    system: EventSystem,
    subscriptions: Callable[[str, str], Subscription],
    channels: list[grpc.aio.Channel],
) -> None:
    booking, notifier = system.booking(), system.notify()
    sleeper, reader = subscriptions("admin", uid("sleeper")), subscriptions("admin", uid("reader"))
    # It does not read (a small window): the server's writes to it block, and then it goes away.
    await sleeper.open(notifier.address, read=False, options=[("grpc.http2.bdp_probe", 0)])
    await reader.open(notifier.address)
    caller = await admin_on(booking, channels)
    await book_and_cancel([caller], 100, parallel=4, notes="n" * 2000)
    # The hub hands each event to every stream in one step: once a reader has all 200, so has the sleeper's
    # writer, which blocked long before (460 KB against a 64 KiB window).
    await eventually(lambda: len(reader.events) >= 200, lambda: f"the reader has {len(reader.events)} of 200")
    await sleeper.close()
    await eventually(lambda: "method=/notify.v1.NotifyService/Subscribe" in notifier.log(), lambda: "no end line")
    ended = [line for line in notifier.log().splitlines() if "method=/notify.v1.NotifyService/Subscribe" in line]
    assert len(ended) == 1 and "code=CANCELLED" in ended[0] and "reason=" not in ended[0], ended
    assert "ERROR" not in notifier.log(), notifier.log_tail()
