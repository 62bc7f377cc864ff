"""The services on a Redis ACL user with exactly the rights docs/configuration.md grants it (the command is taken
from the page itself, so the page cannot drift): a change goes through the relay to a subscriber, and the
housekeeping and probes that run at start work too."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import grpc
import pytest
import redis.asyncio as redis
from grpc_health.v1 import health_pb2

from tests.support.events import EventSystem, Subscription, admin_on, eventually
from tests.support.helpers import uid

pytestmark = pytest.mark.timeout(120)
SERVING = health_pb2.HealthCheckResponse.SERVING
CONFIGURATION = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


async def test_the_documented_acl_user_is_enough_for_both_services(
    system: EventSystem, channels: list[grpc.aio.Channel]
) -> None:
    (command,) = re.findall(r"^ACL SETUSER .*$", CONFIGURATION.read_text(), flags=re.M)
    words = shlex.split(command.replace(">...", ">s3cret"))
    key_pattern = next(word for word in words if word.startswith("~"))
    client = redis.Redis.from_url(system.redis.url)
    try:
        await client.execute_command(*words)  # type: ignore[no-untyped-call]
    finally:
        await client.aclose()
    url = f"redis://booking:s3cret@127.0.0.1:{system.redis.port}/0"
    stream = f"{key_pattern[1:].rstrip('*')}{uid('events')}"  # a key the user may touch
    env = {"REDIS_URL": url, "EVENT_STREAM_KEY": stream, "HEALTH_INTERVAL_SECONDS": "0.2"}
    booking, notify = system.booking(**env), system.notify(**env)
    for process in (booking, notify):  # their health pings Redis: serving only if the user may
        await process.wait_health(SERVING, "events")
    admin = await admin_on(booking, channels)
    watcher = Subscription("admin", uid("ops"))
    await watcher.open(notify.address)
    try:
        made = await admin.create(provider_id=uid("prov"), customer_id=uid("cust"), notes="aisle")
        await admin.delete(made.id, reason="acl")
        await admin.hard_delete(made.id)  # the relay's script: the erased set beside the stream
        await eventually(
            lambda: watcher.error is not None or len(watcher.events) >= 3,
            lambda: f"{len(watcher.events)} of 3 events",
        )
        assert watcher.error is None, watcher.error
        assert [e.booking.id for e in watcher.events] == [made.id] * 3
    finally:
        await watcher.close()
    for process in system.processes:
        assert "NOPERM" not in process.log(), process.log_tail()
