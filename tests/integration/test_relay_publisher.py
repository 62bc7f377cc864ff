"""The relay's publisher against a real Redis: publishing again what the stream already holds (after a
reconnect) appends only what it lacks; a stream that does not end where the publisher left it (it lost entries
under a live connection, or another relay went further) is not appended to; a write Redis refuses is a fault the
relay sees (it then places events in the outbox for notify to follow)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as redis

from booking_service.publisher import RedisPublisher, StreamMoved
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


async def test_publishing_again_what_the_stream_holds_appends_only_what_it_lacks(client: redis.Redis) -> None:
    key = f"test-publisher:{uid('again')}"
    publisher = RedisPublisher(client, key, max_len=1000)
    try:
        await publisher.publish([entry(1), entry(2), entry(3)])
        await RedisPublisher(client, key, max_len=1000).publish([entry(2), entry(3), entry(4)])  # after a reconnect
        entries: Any = await client.xrange(key)
        assert [entry_id for entry_id, _ in entries] == [str(entry(seq)[0]).encode() for seq in range(1, 5)]
    finally:
        await client.delete(key)


async def test_a_stream_that_does_not_end_where_the_publisher_left_it_is_not_appended_to(client: redis.Redis) -> None:
    """Its connection did not fail, yet the stream lost its last entries (a failover to a replica that lacked
    them) or another relay went further: the publisher writes nothing, says so, and asks where it ends."""
    key = f"test-publisher:{uid('moved')}"
    publisher, other = RedisPublisher(client, key, max_len=1000), RedisPublisher(client, key, max_len=1000)
    try:
        await publisher.publish([entry(1), entry(2), entry(3)])
        assert await publisher.read_top_if_unknown() is None  # it knows where the stream ends: 3
        entries: Any = await client.xrange(key)
        async with client.pipeline(transaction=True) as pipe:  # the stream as a replica that lacked 3 has it
            pipe.delete(key)
            pipe.xadd(key, entries[0][1], id=entries[0][0])
            pipe.xadd(key, entries[1][1], id=entries[1][0])
            await pipe.execute()
        with pytest.raises(StreamMoved, match="ends at 1002-2, not at 1003-3"):
            await publisher.publish([entry(4)])
        assert await publisher.read_top_if_unknown() == entry(2)[0]
        await publisher.publish([entry(3), entry(4)])  # what the relay does next: from where the stream ends

        await other.publish([entry(5)])  # another relay went further
        with pytest.raises(StreamMoved, match="ends at 1005-5, not at 1004-4"):
            await publisher.publish([entry(5), entry(6)])
        await publisher.publish([entry(5), entry(6)])
        entries = await client.xrange(key)
        assert [entry_id for entry_id, _ in entries] == [str(entry(seq)[0]).encode() for seq in range(1, 7)]
        assert entries[2][1] == entry(3)[1]
    finally:
        await client.delete(key)


async def test_a_stream_trimmed_or_erased_still_ends_at_its_last_id(client: redis.Redis) -> None:
    """Trimming (all of it, after a quiet day) and erasing leave the stream's last id where it was: the publisher
    appends after it, and erased entries are replaced by their copies in the same script."""
    key = f"test-publisher:{uid('erased')}"
    publisher = RedisPublisher(client, key, max_len=1000)
    try:
        await publisher.publish([entry(1)])
        await client.xtrim(key, minid="9999-0")
        await publisher.publish([entry(2), entry(3)])
        await publisher.publish([entry(4)], erased=[(entry(3)[0], {eventstream.FIELD_EVENT: b"redacted"})])
        await publisher.publish([entry(5)])
        entries: Any = await client.xrange(key)
        assert [entry_id for entry_id, _ in entries] == [b"1002-2", b"1004-4", b"1005-5"]
        copies: Any = await client.zrange(eventstream.erased_key(key), 0, -1, withscores=True)
        unpacked = [(eventstream.unpack_entry(member), seq) for member, seq in copies]
        assert [(entry_id, fields[eventstream.FIELD_EVENT], seq) for (entry_id, fields), seq in unpacked] == [
            (b"1003-3", b"redacted", 3.0)
        ]
    finally:
        await client.delete(key, eventstream.erased_key(key))


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
