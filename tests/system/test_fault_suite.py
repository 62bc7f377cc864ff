"""The fault suite: faults that must never stop service for everyone. Database connections terminated in a loop
under load, SIGTERM under load again and again, a subscriber whose process is frozen."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections import Counter
from pathlib import Path

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2

from notify_service.server import running
from notify_service.settings import Settings
from tests.support.events import EventSystem, Subscription, admin_on, eventually
from tests.support.helpers import uid
from tests.support.servers import PROJECT, notify_env, terminate_backends
from tests.support.writer import Writer

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
FORBIDDEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
KEEPALIVE_BOUND_SECONDS = 40  # docs/architecture.md: a vanished client is noticed within 40 s


async def test_connection_terminations_under_load_never_answer_internal_and_background_work_survives(
    system: EventSystem, channels: list[grpc.aio.Channel]
) -> None:
    # A sweep far longer than the test's deadlines: an event arrives in time only if the relay and its waker live.
    booking = system.booking(RELAY_SWEEP_SECONDS="60", HEALTH_INTERVAL_SECONDS="0.2")
    notifier = system.notify()
    admin = await admin_on(booking, channels)
    seed = await admin.create(provider_id=uid("prov"), customer_id=uid("cust"))
    codes: Counter[grpc.StatusCode] = Counter()
    stop = asyncio.Event()

    async def reader() -> None:
        while not stop.is_set():
            try:
                await admin.get(seed.id)
                codes[grpc.StatusCode.OK] += 1
            except grpc.aio.AioRpcError as error:
                codes[error.code()] += 1

    churn = Writer([admin])
    churn.start()
    readers = [asyncio.create_task(reader()) for _ in range(4)]
    database = system.database_url.rpartition("/")[2]
    terminated = 0
    for _ in range(40):
        terminated += await terminate_backends(system.database_url, database)
        await asyncio.sleep(0.1)
    stop.set()
    await asyncio.gather(*readers)
    await churn.stop()

    failures = Counter(e.code() for e in churn.failures)
    assert terminated > 40
    assert not (set(codes) | set(failures)) & FORBIDDEN, (codes, failures, booking.log()[-3000:])
    assert codes[grpc.StatusCode.OK] > 100

    # Health still follows the database: the watcher survived (it notices the database refusing connections).
    await booking.wait_health(SERVING)
    admin_conn = await asyncpg.connect(system.database_url.rpartition("/")[0] + "/postgres")
    try:
        await admin_conn.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        await terminate_backends(system.database_url, database)
        await booking.wait_health(NOT_SERVING, within=15)
        await admin_conn.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
        await booking.wait_health(SERVING, within=15)
    finally:
        await admin_conn.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
        await admin_conn.close()

    # The relay and its waker survived: a change reaches a subscriber long before the 60 s sweep would.
    watcher = Subscription("admin", uid("ops"))
    await watcher.open(notifier.address)
    try:
        made = await admin.create(provider_id=uid("prov"), customer_id=uid("cust"))
        await eventually(
            lambda: any(e.booking.id == made.id for e in watcher.events),
            lambda: f"the change did not arrive: {booking.log()[-3000:]}",
            within=10,
        )
    finally:
        await watcher.close()
    log = booking.log()
    assert "unexpected error serving an RPC" not in log and "Task exception was never retrieved" not in log


async def test_sigterm_under_load_exits_within_the_grace_period_every_time(
    system: EventSystem, channels: list[grpc.aio.Channel]
) -> None:
    grace = 2.0
    for round_ in range(20):
        booking = system.booking(SHUTDOWN_GRACE_SECONDS=str(grace))
        churn = Writer([await admin_on(booking, channels)])
        churn.start()
        await churn.until(10 + round_)
        started = time.monotonic()
        booking.signal(signal.SIGTERM)
        code = await asyncio.to_thread(booking.wait, grace + 15)
        took = time.monotonic() - started
        await churn.stop()
        assert code == 0, booking.log()[-3000:]
        assert took < grace + 5, f"round {round_}: exit took {took:.1f}s\n{booking.log()[-3000:]}"


@pytest.mark.timeout(120)
async def test_a_frozen_subscriber_process_is_released_within_the_keepalive_bound(
    booking_db_url: str, redis_url: str
) -> None:
    """docs/architecture.md's promise: a vanished client is noticed within 40 s (ping after 30 s idle, 10 s
    for the ack)."""
    settings = Settings.from_env(notify_env(booking_db_url, redis_url), listen="127.0.0.1:0")
    async with running(settings) as notify:
        client = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.support.frozen_subscriber",
            f"127.0.0.1:{notify.port}",
            "200",
            cwd=PROJECT,
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert client.stdout is not None
            assert await asyncio.wait_for(client.stdout.readline(), 30) == b"subscribed\n"
            await eventually(lambda: notify.hub.subscriber_count == 200, lambda: f"{notify.hub.subscriber_count}")
            client.send_signal(signal.SIGSTOP)
            frozen = time.monotonic()
            await eventually(
                lambda: notify.hub.subscriber_count == 0,
                lambda: f"{notify.hub.subscriber_count} still registered",
                within=KEEPALIVE_BOUND_SECONDS + 5,
            )
            # Released by the server's pings (any ping unanswered for 10 s, keepalive ones after 30 s idle), not
            # because the client went away: it is still there, stopped.
            stat = await asyncio.to_thread(Path(f"/proc/{client.pid}/stat").read_text)
            state = stat.rsplit(")", 1)[1].split()[0]
            assert state == "T", f"the client is not frozen (state {state}) after {time.monotonic() - frozen:.0f}s"
        finally:
            client.kill()
            await client.wait()
