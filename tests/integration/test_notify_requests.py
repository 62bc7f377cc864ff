"""Subscribe's contract: authentication, scope, filters and bad input, against one notify_service process that
follows the shared booking service's event stream."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from booking_api.booking.v1 import events_pb2
from booking_api.notify.v1 import notify_pb2, notify_pb2_grpc
from notify_service.server import running
from notify_service.settings import Settings
from tests.support.events import CREATED, DELETED, NOTIFY_DOMAIN, RESTORED, Subscription, eventually
from tests.support.helpers import BAD_HEADERS, Caller, assert_status, auth, details_bin, field_violations, uid
from tests.support.servers import ServiceProcess, notify_env


@pytest.fixture(scope="module")
def notifier(booking_db_url: str, redis_url: str, workdir: Path) -> Iterator[ServiceProcess]:
    process = ServiceProcess("notify_service", notify_env(booking_db_url, redis_url), workdir)
    process.start()
    yield process
    process.stop()


@pytest.fixture
async def notify_stub(notifier: ServiceProcess) -> AsyncIterator[notify_pb2_grpc.NotifyServiceAsyncStub]:
    async with grpc.aio.insecure_channel(notifier.address) as channel:
        yield notify_pb2_grpc.NotifyServiceStub(channel)


async def stream_error(call: AsyncIterable[Any]) -> grpc.aio.AioRpcError:
    try:
        async for _ in call:
            raise AssertionError("the stream delivered an event instead of failing")
    except grpc.aio.AioRpcError as error:
        return error
    raise AssertionError("the stream ended without an error")


@pytest.mark.parametrize("header", BAD_HEADERS.values(), ids=BAD_HEADERS.keys())
async def test_subscribe_without_a_valid_token_is_unauthenticated(
    notify_stub: notify_pb2_grpc.NotifyServiceAsyncStub, header: str | None
) -> None:
    metadata = (("authorization", header),) if header is not None else ()
    error = await stream_error(notify_stub.Subscribe(notify_pb2.SubscribeRequest(), metadata=metadata, timeout=10))
    assert_status(error, grpc.StatusCode.UNAUTHENTICATED, domain=NOTIFY_DOMAIN)


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"resume_after": "not-a-cursor"}, "resume_after"),
        ({"resume_after": "17"}, "resume_after"),
        ({"resume_after": "1-0"}, "resume_after"),
        ({"resume_after": "0-0-0"}, "resume_after"),
        ({"resume_after": "1-99999999999999999999"}, "resume_after"),
        ({"booking_id": "not-a-uuid"}, "booking_id"),
        ({"customer_id": "c" * 129}, "customer_id"),
        ({"provider_id": "p\x00"}, "provider_id"),
        ({"customer_id": " padded "}, "customer_id"),
    ],
)
async def test_bad_subscribe_requests_are_invalid_argument_naming_the_field(
    notify_stub: notify_pb2_grpc.NotifyServiceAsyncStub, request_fields: dict[str, str], field: str
) -> None:
    call = notify_stub.Subscribe(notify_pb2.SubscribeRequest(**request_fields), metadata=auth("admin", "a"), timeout=10)
    error = await stream_error(call)
    assert_status(error, grpc.StatusCode.INVALID_ARGUMENT, domain=NOTIFY_DOMAIN)
    assert field in field_violations(error)


async def test_a_cursor_the_stream_never_had_is_out_of_range(
    notify_stub: notify_pb2_grpc.NotifyServiceAsyncStub,
) -> None:
    request = notify_pb2.SubscribeRequest(resume_after="99999999999999-999999999")
    error = await stream_error(notify_stub.Subscribe(request, metadata=auth("user", "a"), timeout=10))
    assert_status(error, grpc.StatusCode.OUT_OF_RANGE, "CURSOR_EXPIRED", NOTIFY_DOMAIN)


@pytest.mark.parametrize("payload", [b"\xff\xff\xff\xff", b"\x0a\x05ab"])
def test_bytes_that_are_not_a_subscribe_request_are_invalid_argument(notifier: ServiceProcess, payload: bytes) -> None:
    with grpc.insecure_channel(notifier.address) as channel:
        call: grpc.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream("/notify.v1.NotifyService/Subscribe")
        with pytest.raises(grpc.RpcError) as info:
            list(call(payload, metadata=auth("admin", "fuzzer"), timeout=10))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert NOTIFY_DOMAIN.encode() in details_bin(info.value)


async def test_each_stream_carries_only_what_its_caller_may_see_narrowed_by_its_filters(
    notifier: ServiceProcess, caller: Callable[[str, str], Caller]
) -> None:
    alice, bob, prov1, prov2 = uid("alice"), uid("bob"), uid("prov"), uid("prov")
    admin = caller("admin", uid("admin"))
    watchers = {
        "alice": (Subscription("user", alice), {}),
        "bob": (Subscription("user", bob), {}),
        "prov1": (Subscription("provider", prov1), {}),
        "admin": (Subscription("admin", uid("ops")), {}),
        "alice_at_prov2": (Subscription("user", alice), {"provider_id": prov2}),
        "prov1_for_bob": (Subscription("provider", prov1), {"customer_id": bob}),
    }
    try:
        for subscription, filters in watchers.values():
            await subscription.open(notifier.address, filters=filters)
        a1 = await admin.create(customer_id=alice, provider_id=prov1)
        b1 = await admin.create(customer_id=bob, provider_id=prov1)
        a2 = await admin.create(customer_id=alice, provider_id=prov2)
        b2 = await admin.create(customer_id=bob, provider_id=prov2)
        await admin.delete(b1.id, reason="scope test")
        await admin.delete(a2.id, reason="scope test")
        last_change = await admin.create(customer_id=alice, provider_id=prov1)  # every subscriber but bob's ends here
        bob_last = await admin.create(customer_id=bob, provider_id=prov1)

        changes = [
            (a1, CREATED),
            (b1, CREATED),
            (a2, CREATED),
            (b2, CREATED),
            (b1, DELETED),
            (a2, DELETED),
            (last_change, CREATED),
            (bob_last, CREATED),
        ]
        expected = {
            "alice": [c for c in changes if c[0].customer_id == alice],
            "bob": [c for c in changes if c[0].customer_id == bob],
            "prov1": [c for c in changes if c[0].provider_id == prov1],
            "admin": changes,
            "alice_at_prov2": [c for c in changes if c[0].customer_id == alice and c[0].provider_id == prov2],
            "prov1_for_bob": [c for c in changes if c[0].provider_id == prov1 and c[0].customer_id == bob],
        }
        for name, (subscription, _) in watchers.items():
            # Stream order is commit order, so once a subscriber has its last expected event it has all it will get.
            final = expected[name][-1][0].id
            await eventually_has(subscription, final, expected[name][-1][1])
            mine = [(e.booking.id, e.type) for e in subscription.events if e.booking.id in {c[0].id for c in changes}]
            assert mine == [(b.id, kind) for b, kind in expected[name]], name
            assert all(is_theirs(e, subscription) for e in subscription.events), name
    finally:
        for subscription, _ in watchers.values():
            await subscription.close()


def is_theirs(event: events_pb2.BookingEvent, subscription: Subscription) -> bool:
    if subscription.role == "user":
        return event.booking.customer_id == subscription.sub
    if subscription.role == "provider":
        return event.booking.provider_id == subscription.sub
    return True


async def eventually_has(subscription: Subscription, booking_id: str, kind: int, *, times: int = 1) -> None:
    await eventually(
        lambda: (
            sum(e.booking.id == booking_id and e.type == kind for e in subscription.events) >= times
            or subscription.error is not None
        ),
        lambda: f"{subscription.sub} did not get {booking_id}",
    )
    assert subscription.error is None, subscription.error


async def test_cancelled_and_disconnected_subscribers_leave_nothing_behind(
    booking_db_url: str, redis_url: str, caller: Callable[[str, str], Caller]
) -> None:
    # In this process, so the test can look into the hub; a real server on a real port all the same.
    settings = Settings.from_env(notify_env(booking_db_url, redis_url), listen="127.0.0.1:0")
    async with running(settings) as notify:
        address = f"127.0.0.1:{notify.port}"
        kept = Subscription("admin", uid("kept"))
        await kept.open(address)
        dropped = [Subscription("user", uid("user")) for _ in range(20)]
        for subscription in dropped[:10]:
            await subscription.open(address)
        # A resuming subscriber too: it registers once its history is read.
        booking = await caller("admin", uid("admin")).create(customer_id=uid("c"), provider_id=uid("p"))
        await eventually(lambda: any(e.booking.id == booking.id for e in kept.events), lambda: "no event")
        for subscription in dropped[10:]:
            await subscription.open(address, filters={"resume_after": kept.last_id})
        await eventually(lambda: notify.hub.subscriber_count == 21, lambda: f"{notify.hub.subscriber_count} joined")

        for subscription in dropped:
            await subscription.close()  # cancels the call and closes its connection
        await eventually(lambda: notify.hub.subscriber_count == 1, lambda: f"{notify.hub.subscriber_count} left")
        await kept.close()
        await eventually(lambda: notify.hub.subscriber_count == 0, lambda: f"{notify.hub.subscriber_count} left")


async def test_booking_id_filters_and_colliding_identities_never_widen_what_a_stream_carries(
    notifier: ServiceProcess, caller: Callable[[str, str], Caller]
) -> None:
    """A booking_id narrows the caller's scope, live and from history; it never opens someone else's booking,
    and a sub that is a provider's id does not see that provider's bookings as a user (nor the reverse)."""
    alice, bob, prov = uid("alice"), uid("bob"), uid("prov")
    admin = caller("admin", uid("admin"))
    # The admin subscribes first, to see `target` dispatched: the others subscribe after it (live: from then on).
    watching = Subscription("admin", uid("ops"))
    await watching.open(notifier.address)
    target = await admin.create(customer_id=alice, provider_id=prov)
    await eventually_has(watching, target.id, CREATED)
    live = {
        "alice_target": (Subscription("user", alice), {"booking_id": target.id}),
        "bob_target": (Subscription("user", bob), {"booking_id": target.id}),
        "prov_as_user": (Subscription("user", prov), {}),
        "alice_as_provider": (Subscription("provider", alice), {}),
        "admin": (watching, {}),
    }
    history = {
        "alice_target": (Subscription("user", alice), {"booking_id": target.id, "resume_after": "0-0"}),
        "bob_target": (Subscription("user", bob), {"booking_id": target.id, "resume_after": "0-0"}),
        "admin": (Subscription("admin", uid("ops")), {"booking_id": target.id, "resume_after": "0-0"}),
    }
    try:
        for name, (subscription, filters) in live.items():
            if name != "admin":
                await subscription.open(notifier.address, filters=filters)
        other = await admin.create(customer_id=bob, provider_id=prov)
        await admin.delete(target.id, reason="filter test")
        await admin.restore(target.id)
        # Each stream's last event, a marker: once a stream has it, it has everything dispatched to it before.
        await admin.delete(target.id, reason="the marker of alice_target")
        marks = {
            "prov_as_user": await admin.create(customer_id=prov, provider_id=uid("prov")),
            "alice_as_provider": await admin.create(customer_id=uid("carol"), provider_id=alice),
        }
        last = await admin.create(customer_id=bob, provider_id=uid("prov"))
        await eventually_has(live["admin"][0], last.id, CREATED)
        await eventually_has(live["alice_target"][0], target.id, DELETED, times=2)
        for name, mark in marks.items():
            await eventually_has(live[name][0], mark.id, CREATED)
            assert [e.booking.id for e in live[name][0].events] == [mark.id], name
        assert [(e.booking.id, e.type) for e in live["alice_target"][0].events] == [
            (target.id, DELETED),
            (target.id, RESTORED),
            (target.id, DELETED),
        ]
        # bob's stream can carry nothing, so it has no marker: the hub hands each event to every stream of the
        # instance in one step, and alice_target's marker came after everything bob could have been given.
        assert live["bob_target"][0].events == [] and live["bob_target"][0].error is None
        assert other.id in {e.booking.id for e in live["admin"][0].events}

        for subscription, filters in history.values():
            await subscription.open(notifier.address, filters=filters)
        await eventually_has(history["admin"][0], target.id, DELETED, times=2)
        await eventually_has(history["alice_target"][0], target.id, DELETED, times=2)
        wanted = [(target.id, CREATED), (target.id, DELETED), (target.id, RESTORED), (target.id, DELETED)]
        assert [(e.booking.id, e.type) for e in history["alice_target"][0].events] == wanted
        assert [(e.booking.id, e.type) for e in history["admin"][0].events] == wanted
        assert history["bob_target"][0].events == [] and history["bob_target"][0].error is None
    finally:
        for subscription, _ in (*live.values(), *history.values()):
            await subscription.close()
