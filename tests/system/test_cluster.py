"""The load-balanced cluster of `make cluster` and docker-compose.yml: nginx with deploy/nginx/nginx.conf in front
of two booking and two notify instances, one address for every client. Calls to both services through it, a
subscriber resuming through it after its notify instance is SIGKILLed, and a rolling restart of every instance
with no failed call and no lost event."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from booking_api.booking.v1 import booking_pb2, booking_pb2_grpc
from booking_api.notify.v1 import notify_pb2, notify_pb2_grpc
from devtools.cluster import Balancer
from devtools.servers import free_port
from tests.support.events import EventSystem, Subscription, assert_exactly, assert_order_per_booking, eventually
from tests.support.grpcurl import Grpcurl, GrpcurlError
from tests.support.helpers import Caller, auth, expect_error, fresh_slot, token, ts, uid
from tests.support.servers import ServiceProcess, require_nginx
from tests.support.writer import Writer

pytestmark = pytest.mark.timeout(240)


class Cluster:
    def __init__(self, system: EventSystem) -> None:
        self.system = system
        self.bookings = [system.booking(), system.booking()]
        self.notifiers = [system.notify(), system.notify()]
        self.balancer = Balancer(
            system.workdir / uid("nginx"),
            ("127.0.0.1", free_port()),
            [p.address for p in self.bookings],
            [p.address for p in self.notifiers],
        )
        self.balancer.start()

    def instance(self, address: str) -> ServiceProcess:
        return next(p for p in (*self.bookings, *self.notifiers) if p.address == address)


@pytest.fixture
def cluster(system: EventSystem) -> Iterator[Cluster]:
    require_nginx()
    made = Cluster(system)
    yield made
    made.balancer.stop()


@pytest.fixture
async def admin(cluster: Cluster) -> AsyncIterator[Caller]:
    async with grpc.aio.insecure_channel(cluster.balancer.address) as channel:
        yield Caller(booking_pb2_grpc.BookingServiceStub(channel), "admin", uid("admin"))


async def upstream_of(call: grpc.aio.Call) -> str:
    """The instance that answered (the balancer names it in the initial metadata)."""
    metadata = await asyncio.wait_for(call.initial_metadata(), 30)
    return str(dict(metadata)["x-upstream"])


async def test_both_services_answer_through_one_address_spread_over_their_instances(
    cluster: Cluster, admin: Caller
) -> None:
    subscription = Subscription("admin", admin.id)
    call = await subscription.open(cluster.balancer.address)
    assert await upstream_of(call) in {p.address for p in cluster.notifiers}
    answered = set()
    for _ in range(6):
        call = admin.stub.CreateBooking(admin_create_request(), metadata=admin.metadata, timeout=30)
        booking = (await call).booking
        answered.add(await upstream_of(call))
    assert answered == {p.address for p in cluster.bookings}  # round robin over both
    await subscription.wait_for((await cluster.system.wait_relayed(6))[-1][0])
    assert subscription.events[-1].booking.id == booking.id
    # Errors come through with their status and details; health answers for booking.
    await expect_error(admin.get(str(uuid.uuid4())), grpc.StatusCode.NOT_FOUND, "BOOKING_NOT_FOUND")
    async with grpc.aio.insecure_channel(cluster.balancer.address) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    await subscription.close()


async def test_health_and_reflection_of_both_services_at_the_one_address(cluster: Cluster) -> None:
    """Health and reflection share one path for both services: the header x-service names the one to answer
    (booking without it), so grpcurl and bookingctl reach notify's too."""
    address = cluster.balancer.address
    async with grpc.aio.insecure_channel(address) as channel:
        for name, instances in (("booking", cluster.bookings), ("notify", cluster.notifiers)):
            check = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), metadata=(("x-service", name),), timeout=10
            )
            assert (await check).status == health_pb2.HealthCheckResponse.SERVING
            assert await upstream_of(check) in {p.address for p in instances}
            listing = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                metadata=(("x-service", name),),
                timeout=10,
            )
            services = [s.name for answer in [r async for r in listing] for s in answer.list_services_response.service]
            assert f"{name}.v1.{name.capitalize()}Service" in services, services
    env = {**os.environ, "BOOKING_TARGET": address, "BOOKING_NOTIFY_TARGET": ""}  # one address, nothing else
    shown = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "booking_client.cli", "-o", "json", "health"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert [(r["service"], r["target"]) for r in json.loads(shown.stdout)] == [
        ("booking", address),
        ("notify", address),
    ]


async def taken_back(cluster: Cluster, instance: ServiceProcess) -> None:
    """Wait until the balancer passes calls to `instance` again, as a rollout waits for an instance to be ready
    before it restarts the next (nginx's passive checks skip an instance that failed for fail_timeout, 1 s)."""
    metadata = auth("admin", uid("probe"))
    async with grpc.aio.insecure_channel(cluster.balancer.address) as channel:
        for _ in range(300):
            call: grpc.aio.Call
            if instance in cluster.bookings:
                call = booking_pb2_grpc.BookingServiceStub(channel).ListBookings(
                    booking_pb2.ListBookingsRequest(page_size=1), metadata=metadata, timeout=10
                )
            else:
                call = notify_pb2_grpc.NotifyServiceStub(channel).Subscribe(
                    notify_pb2.SubscribeRequest(), metadata=metadata, timeout=10
                )
            answered = await upstream_of(call)
            call.cancel()
            if answered == instance.address:
                return
            await asyncio.sleep(0.05)
    raise AssertionError(f"the balancer did not take {instance.address} back")


def admin_create_request() -> booking_pb2.CreateBookingRequest:
    start, end = fresh_slot()
    return booking_pb2.CreateBookingRequest(
        booking=booking_pb2.Booking(
            customer_id=uid("cust"),
            provider_id=uid("prov"),
            service_id="haircut",
            start_time=ts(start),
            end_time=ts(end),
        )
    )


def test_the_grpcurl_calls_of_docs_operations_work_through_the_balancer(cluster: Cluster) -> None:
    """docs/operations.md's calls at the one address, with the real grpcurl (the Subscribe bounded by -max-time:
    it streams until stopped)."""
    page = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    calls = [line for line in page.splitlines() if line.startswith("grpcurl -plaintext") and "50050" in line]
    assert len(calls) == 3, calls
    grpcurl = Grpcurl({"ADMIN": token("admin", "root")})
    listed, health = (grpcurl.run(call.replace("localhost:50050", cluster.balancer.address)) for call in calls[:2])
    assert isinstance(listed, dict) and health == {"status": "SERVING"}
    with pytest.raises(GrpcurlError) as streamed:
        grpcurl.run(
            calls[2].replace("grpcurl ", "grpcurl -max-time 2 ").replace("localhost:50050", cluster.balancer.address)
        )
    assert streamed.value.code == "DEADLINE_EXCEEDED"  # subscribed, and streaming when -max-time ended it


async def test_a_subscriber_resumes_through_the_balancer_after_its_instance_is_killed(
    cluster: Cluster, admin: Caller
) -> None:
    subscription = Subscription("admin", admin.id)
    call = await subscription.open(cluster.balancer.address)
    doomed = cluster.instance(await upstream_of(call))
    churn = Writer([admin])
    churn.start()
    try:
        await churn.until(20)
        await eventually(lambda: len(subscription.events) >= 10, lambda: "no events before the kill")
        doomed.signal(signal.SIGKILL)
        error = await subscription.wait_error()
        # nginx resets a stream whose instance vanished (RST_STREAM INTERNAL_ERROR, which grpc reports as
        # INTERNAL; a direct connection would give UNAVAILABLE): a subscriber resumes on either.
        assert error.code() == grpc.StatusCode.UNAVAILABLE or (
            error.code() == grpc.StatusCode.INTERNAL and "RST_STREAM" in (error.details() or "")
        ), error
        await churn.until(churn.changes + 10)
        call = await subscription.open(cluster.balancer.address, resume=True)
        assert await upstream_of(call) != doomed.address
        await churn.until(churn.changes + 20)
    finally:
        changes = await churn.stop()
    assert not churn.failures
    committed = await cluster.system.wait_relayed(changes)
    await subscription.wait_for(committed[-1][0])
    assert_exactly(subscription, committed)
    await subscription.close()


async def test_a_rolling_restart_of_every_instance_fails_no_call_and_loses_no_event(
    cluster: Cluster, admin: Caller
) -> None:
    subscription = Subscription("admin", admin.id)
    await subscription.open(cluster.balancer.address)
    ends: list[grpc.StatusCode] = []
    stop = asyncio.Event()

    async def follow() -> None:
        """What a subscriber does: resume from its last event whenever its stream ends."""
        while not stop.is_set():
            if subscription.error is not None:
                ends.append(subscription.error.code())
                await subscription.open(cluster.balancer.address, resume=True)
            await asyncio.sleep(0.02)

    follower = asyncio.create_task(follow())
    churn = Writer([admin, admin, admin])
    churn.start()
    try:
        for instance in (*cluster.bookings, *cluster.notifiers):
            await churn.until(churn.changes + 20)
            await asyncio.to_thread(instance.stop)  # SIGTERM: drains within its grace
            await churn.until(churn.changes + 10)  # served by the others meanwhile
            await asyncio.to_thread(instance.start)
            await taken_back(cluster, instance)
            # Each nginx worker keeps its own passive health state: one that last saw this instance refuse may
            # skip it for fail_timeout (1 s) after another has taken it back. A rollout waits that long too
            # (Kubernetes' minReadySeconds) before it stops the next instance, else that worker has none left.
            await asyncio.sleep(1.5)
        await churn.until(churn.changes + 20)
    finally:
        changes = await churn.stop()
        stop.set()
        await follower
    assert not churn.failures, [(e.code(), e.details()) for e in churn.failures]
    assert set(ends) <= {grpc.StatusCode.UNAVAILABLE}, ends
    committed = await cluster.system.wait_relayed(changes)
    await subscription.wait_for(committed[-1][0])
    assert_exactly(subscription, committed)
    assert_order_per_booking(subscription)
    with contextlib.suppress(Exception):
        await subscription.close()
