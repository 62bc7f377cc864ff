"""svc_common.redis_client's pool after Sentinel names another primary, against two real Redis servers with a
stand-in for Sentinel's answer (so the switch happens exactly when the test says, not at Sentinel's next INFO
read): a connection busy in a blocking read on the replaced primary is closed as it comes back to the pool, and
the next read goes to the primary now named. (tests/system/test_redis_failover.py does it with real sentinels.)"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis

from devtools.servers import RedisServer
from svc_common.redis_client import _FollowingPool
from tests.support.events import eventually

pytestmark = pytest.mark.timeout(60)


class Named:
    """Stands in for the sentinels: the primary they name now."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address

    async def discover_master(self, _service: str) -> tuple[str, int]:
        return self.address


@pytest.fixture
def two_primaries(tmp_path: Path) -> Iterator[tuple[RedisServer, RedisServer]]:
    servers = (RedisServer(tmp_path / "old"), RedisServer(tmp_path / "new"))
    for server in servers:
        server.start()
    yield servers
    for server in servers:
        server.stop()


async def test_a_blocking_read_on_a_primary_no_longer_named_is_its_connections_last(
    two_primaries: tuple[RedisServer, RedisServer],
) -> None:
    old, new = (redis.Redis.from_url(server.url) for server in two_primaries)
    await old.xadd("k", {"n": "old"}, id="1-1")
    await new.xadd("k", {"n": "new"}, id="2-2")  # what only the new primary holds
    named = Named(("127.0.0.1", two_primaries[0].port))
    pool = _FollowingPool("events", named, socket_timeout=10)  # type: ignore[no-untyped-call]
    client = redis.Redis(connection_pool=pool)
    try:
        reading: asyncio.Future[Any] = asyncio.ensure_future(client.xread({"k": "1-1"}, block=8000))  # waits there

        async def blocked() -> bool:
            return int((await old.info("clients"))["blocked_clients"]) >= 1

        await eventually(blocked, lambda: "the read never blocked on the old primary", within=10)
        # What follow_failovers does when the sentinels name another primary: record it, drop idle connections.
        named.address = pool.named_primary = ("127.0.0.1", two_primaries[1].port)
        await pool.disconnect(inuse_connections=False)
        await old.xadd("k", {"n": "old"}, id="3-3")  # ends the blocking read, on the old primary
        got: Any = await reading
        assert [entry_id for _key, entries in got for entry_id, _ in entries] == [b"3-3"]
        again: Any = await client.xread({"k": "0-0"})
        assert [entry_id for _key, entries in again for entry_id, _ in entries] == [b"2-2"]  # the new primary
    finally:
        await client.aclose()
        await pool.aclose()  # a pool given to a client is not the client's to close
        await old.aclose()
        await new.aclose()
