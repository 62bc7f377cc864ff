"""/metrics (METRICS_LISTEN): the gRPC server metrics, by method and status, as go-grpc-middleware names
them, summed over a service's workers."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import uuid

import grpc
import pytest

from booking_api.booking.v1 import booking_pb2, booking_pb2_grpc
from devtools.servers import free_port
from svc_common.version import build_info
from tests.support.events import EventSystem, Subscription, admin_on, eventually
from tests.support.helpers import exported_names, scrape, uid
from tests.support.servers import PROJECT

BOOKING = "grpc_service=booking.v1.BookingService,grpc_type=unary"
NOTIFY = "grpc_service=notify.v1.NotifyService,grpc_type=server_stream"


def sample(samples: dict[str, float], name: str, method: str, labels: str, code: str = "") -> float:
    key = f"{name}{{{f'grpc_code={code},' if code else ''}grpc_method={method},{labels}}}"
    return samples.get(key, 0.0)


async def test_every_rpc_is_counted_by_method_and_code_across_workers(
    system: EventSystem, channels: list[grpc.aio.Channel]
) -> None:
    booking_port, notify_port = free_port(), free_port()
    booking = system.booking(WORKERS="2", METRICS_LISTEN=f"127.0.0.1:{booking_port}")
    notify = system.notify(METRICS_LISTEN=f"127.0.0.1:{notify_port}")
    watcher = Subscription("admin", uid("ops"))
    await watcher.open(notify.address)
    admin = await admin_on(booking, channels)
    made = [await admin.create(provider_id=uid("prov"), customer_id=uid("cust")) for _ in range(3)]
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await admin.get(str(uuid.uuid4()))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    anonymous = booking_pb2_grpc.BookingServiceStub(channels[0])
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await anonymous.GetBooking(booking_pb2.GetBookingRequest(booking_id=made[0].id), timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    await eventually(lambda: len(watcher.events) >= 3, lambda: f"{len(watcher.events)} events")
    await watcher.close()

    samples = scrape(booking_port)
    info = build_info({})
    for port, service in ((booking_port, "booking_service"), (notify_port, "notify_service")):  # what runs
        labels = f"commit={info.commit},python={info.python},service={service},version={info.version}"
        assert scrape(port).get(f"build_info{{{labels}}}") == 1, [k for k in scrape(port) if "build" in k]
    assert sample(samples, "grpc_server_started_total", "CreateBooking", BOOKING) == 3
    assert sample(samples, "grpc_server_handled_total", "CreateBooking", BOOKING, "OK") == 3
    assert sample(samples, "grpc_server_msg_received_total", "CreateBooking", BOOKING) == 3
    assert sample(samples, "grpc_server_msg_sent_total", "CreateBooking", BOOKING) == 3
    assert sample(samples, "grpc_server_handling_seconds_count", "CreateBooking", BOOKING) == 3
    assert sample(samples, "grpc_server_handled_total", "GetBooking", BOOKING, "NotFound") == 1
    assert sample(samples, "grpc_server_handled_total", "GetBooking", BOOKING, "Unauthenticated") == 1
    assert sample(samples, "grpc_server_started_total", "GetBooking", BOOKING) == 2

    def subscribe_ended() -> bool:
        return sample(scrape(notify_port), "grpc_server_handled_total", "Subscribe", NOTIFY, "Canceled") == 1

    await eventually(subscribe_ended, lambda: f"metrics: {scrape(notify_port)}")
    samples = scrape(notify_port)
    assert sample(samples, "grpc_server_started_total", "Subscribe", NOTIFY) == 1
    # One response per event at this pace (or fewer, batched): never more, never none.
    responses = sample(samples, "grpc_server_msg_sent_total", "Subscribe", NOTIFY)
    assert 1 <= responses <= len(watcher.events)
    # The service's own view of the same stream.
    assert samples["notify_responses_written_total"] == responses
    assert samples["notify_events_delivered_total"] == len(watcher.events) == 3
    assert samples["notify_subscriptions_open"] == 0
    assert samples["notify_subscriptions_ended_total{reason=CANCELLED}"] == 1
    assert samples["notify_events_from_postgres"] == 0
    assert 0 <= samples["notify_stream_read_lag_seconds"] < 60

    # Counted as soon as Redis has acknowledged them, which may be just after notify delivered them.
    await eventually(
        lambda: scrape(booking_port).get("booking_events_published_total") == 3, lambda: f"{scrape(booking_port)}"
    )
    samples = scrape(booking_port)
    assert samples["booking_relay_round_seconds_count"] >= 1
    assert samples["booking_database_up"] == 1 and samples["booking_redis_up"] == 1
    assert samples["booking_outbox_unpublished_events"] == 0
    assert samples["booking_db_pool_connections_in_use"] >= 0

    # The dashboard in deploy/ charts only what the services export.
    dashboard = json.loads((PROJECT / "deploy" / "grafana" / "booking-backend.json").read_text())
    charted = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"([a-z_]+)\{", target["expr"])
    }
    assert len(charted) >= 15
    # Each job exports only its own (a notify exporting booking_database_up 0 showed the database down), and
    # each charted name comes from the job that owns it: booking_* from booking, notify_* from notify, the
    # rest from both.
    exported = {"booking": exported_names(booking_port), "notify": exported_names(notify_port)}
    assert not [n for n in exported["notify"] if n.startswith("booking_")], exported["notify"]
    assert not [n for n in exported["booking"] if n.startswith("notify_")], exported["booking"]
    for name in charted:
        owners = [job for job in exported if name.startswith(f"{job}_")] or list(exported)
        assert all(name in exported[job] for job in owners), (name, owners)


async def test_an_open_stream_has_its_messages_counted_before_it_ends(
    system: EventSystem, channels: list[grpc.aio.Channel]
) -> None:
    """grpc_server_msg_sent_total is added to in bulk, not per write: a stream that stays open still shows what
    it sent within about a second, across workers."""
    notify_port = free_port()
    notify = system.notify(WORKERS="2", METRICS_LISTEN=f"127.0.0.1:{notify_port}")
    watchers = [Subscription("admin", uid("ops")) for _ in range(4)]  # on either worker, or both
    admin = await admin_on(system.booking(), channels)
    try:
        for watcher in watchers:
            await watcher.open(notify.address)
        for _ in range(3):
            await admin.create(provider_id=uid("prov"), customer_id=uid("cust"))
        await eventually(lambda: all(len(w.events) == 3 for w in watchers), lambda: "not every subscriber has 3")

        def counts() -> tuple[float, float | None]:
            samples = scrape(notify_port)
            sent = sample(samples, "grpc_server_msg_sent_total", "Subscribe", NOTIFY)
            return sent, samples.get("notify_responses_written_total")

        def counted() -> bool:
            sent, written = counts()
            return len(watchers) <= sent == written

        await eventually(counted, lambda: f"(sent, responses written): {counts()}", within=10)
        assert scrape(notify_port)["notify_subscriptions_open"] == len(watchers)
    finally:
        for watcher in watchers:
            await watcher.close()


def hop(samples: dict[str, float], metric: str, name: str, suffix: str, labels: str = "") -> float:
    return samples.get(f"{metric}_{suffix}{{hop={name}{labels}}}", 0.0)


def above(samples: dict[str, float], metric: str, name: str, seconds: float, labels: str = "") -> float:
    """How many observations of the hop `name` took longer than `seconds` (a bucket bound)."""
    within = samples[f"{metric}_bucket{{hop={name},le={seconds}{labels}}}"]
    return hop(samples, metric, name, "count", labels) - within


async def test_each_hop_of_a_change_is_timed_from_its_write_to_its_subscribers(
    system: EventSystem, channels: list[grpc.aio.Channel]
) -> None:
    """booking_event_hop_seconds (placed, published) and notify_event_hop_seconds (read, first_write,
    last_write), after real changes: one observation per event and hop (per batch read for the writes), and a
    change held up on its way (Redis stopped for 0.4 s while it is published) shows in its hops."""
    booking_port, notify_port = free_port(), free_port()
    booking = system.booking(WORKERS="2", METRICS_LISTEN=f"127.0.0.1:{booking_port}")
    notify = system.notify(WORKERS="1", METRICS_LISTEN=f"127.0.0.1:{notify_port}")
    watchers = [Subscription("admin", uid("ops")), Subscription("admin", uid("ops"))]
    admin = await admin_on(booking, channels)
    try:
        for watcher in watchers:
            await watcher.open(notify.address)

        async def change(count: int) -> None:  # each one read and written before the next: a batch each
            for _ in range(count):
                made = len(watchers[0].events) + 1
                await admin.create(provider_id=uid("prov"), customer_id=uid("cust"))
                await delivered(made)

        async def delivered(events: int) -> None:
            await eventually(
                lambda: all(len(watcher.events) >= events for watcher in watchers),
                lambda: f"not every subscriber has {events} events",
            )

        await change(3)
        redis_pid = system.redis.process.pid  # type: ignore[union-attr]
        os.kill(redis_pid, signal.SIGSTOP)  # shorter than the Redis timeout (0.5 s): the XADD waits, no fault
        try:
            held = asyncio.create_task(change(1))
            await asyncio.sleep(0.4)
        finally:
            os.kill(redis_pid, signal.SIGCONT)
        await held
        await change(2)
    finally:
        for watcher in watchers:
            await watcher.close()

    def counted(port: int, metric: str, name: str, labels: str = "") -> bool:
        return hop(scrape(port), metric, name, "count", labels) >= 6

    booking_hops, notify_hops = "booking_event_hop_seconds", "notify_event_hop_seconds"
    await eventually(lambda: counted(booking_port, booking_hops, "published"), lambda: f"{scrape(booking_port)}")
    redis = ",source=redis"
    await eventually(lambda: counted(notify_port, notify_hops, "last_write", redis), lambda: f"{scrape(notify_port)}")
    ours, theirs = scrape(booking_port), scrape(notify_port)
    for name in ("placed", "published"):
        assert hop(ours, booking_hops, name, "count") == 6, name
        assert 0 <= hop(ours, booking_hops, name, "sum") < 6 * 2.0, name  # seconds, not milliseconds
    for name in ("read", "first_write", "last_write"):
        assert hop(theirs, notify_hops, name, "count", redis) == 6, name
        assert 0 <= hop(theirs, notify_hops, name, "sum", redis) < 6 * 2.0, name
        assert hop(theirs, notify_hops, name, "count", ",source=postgres") == 0, name
    # The held change waited in its publishing, and so in the read that follows it; nothing else did.
    assert above(ours, booking_hops, "published", 0.15) == 1
    assert above(theirs, notify_hops, "read", 0.15, redis) == 1
    assert above(ours, booking_hops, "placed", 0.15) == 0
    assert above(theirs, notify_hops, "first_write", 0.15, redis) == 0
    # A batch's last write ends no sooner than its first.
    assert hop(theirs, notify_hops, "last_write", "sum", redis) >= hop(theirs, notify_hops, "first_write", "sum", redis)
