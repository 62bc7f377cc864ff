"""The relay's publisher against a real Redis: publishing again what the stream already holds (after a
reconnect, or from a relay that lost its lock) is publishing, not a fault; a write Redis refuses is a fault the
relay sees (it then places events in the outbox for notify to follow)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as redis

from booking_service.relay import RedisPublisher
from svc_common import eventstream
from svc_common.eventstream import EventId
from tests.support.helpers import uid

Entry = tuple[EventId, dict[bytes, bytes]]


def entry(seq: int) -> Entry:
    return EventId(1000 + seq, seq), {eventstream.FIELD_EVENT: f"event {seq}".encode()}


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[redis.Redis]:
    made = redis.Redis.from_url(redis_url)
    yield made
    await made.aclose()


async def test_publishing_again_what_the_stream_holds_is_not_a_fault(client: redis.Redis) -> None:
    key = f"test-publisher:{uid('again')}"
    behind, ahead = RedisPublisher(client, key, max_len=1000), RedisPublisher(client, key, max_len=1000)
    try:
        await behind.publish([entry(1), entry(2)])
        assert await behind.read_top_if_unknown() is None  # it knows where the stream ends: 2
        await ahead.publish([entry(3), entry(4)])  # meanwhile, another relay went further
        await behind.publish([entry(3), entry(4), entry(5)])  # 3 and 4 are there already: no error
        entries: Any = await client.xrange(key)
        assert [entry_id for entry_id, _ in entries] == [str(entry(seq)[0]).encode() for seq in range(1, 6)]
    finally:
        await client.delete(key)


async def test_a_refused_write_is_a_fault(client: redis.Redis) -> None:
    key = f"test-publisher:{uid('refused')}"
    publisher = RedisPublisher(client, key, max_len=1000)
    await client.config_set("maxmemory-policy", "noeviction")
    await client.config_set("maxmemory", 1)
    try:
        with pytest.raises(redis.ResponseError, match="maxmemory"):
            await publisher.publish([entry(1)])
        with pytest.raises(redis.ResponseError, match="maxmemory"):
            await publisher.probe()
    finally:
        await client.config_set("maxmemory", 0)
    await publisher.publish([entry(1)])
    await publisher.probe()
    await client.delete(key, f"{key}:probe")
