"""The relay's Redis side: appending placed events to the stream under their own ids, only where this publisher
last left it (one Lua script, which also swaps in erased copies), reading what the stream holds, and trimming it.
The PostgreSQL side is booking_service.outbox; the loop that joins them, booking_service.relay.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.asyncio as redis
from google.protobuf.message import DecodeError
from redis.exceptions import RedisError

from booking_api.booking.v1 import events_pb2
from svc_common import eventstream as stream
from svc_common.eventstream import EventId
from svc_common.outbox import change_of

Entry = tuple[EventId, dict[bytes, bytes]]  # a stream entry: its id and fields


# KEYS: the stream, its erased set. ARGV: the last id the publisher expects the stream to have ("0-0": none), the
# stream's max length, the number of erased entries, then (packed copy, seq, id) for each, then (id, number of
# values, field, value, ...) for each entry to append. Returns the stream's last id, writing nothing, when it is
# not the one expected; else nil. The last id is last-generated-id, which XDEL (erasure) leaves alone.
APPEND_SCRIPT = """
local key, erased_key = KEYS[1], KEYS[2]
local top = '0-0'
if redis.call('EXISTS', key) == 1 then
  local info = redis.call('XINFO', 'STREAM', key)
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then top = info[i + 1] end
  end
end
if top ~= ARGV[1] then return top end
local at = 4
for _ = 1, tonumber(ARGV[3]) do
  redis.call('ZADD', erased_key, ARGV[at + 1], ARGV[at])
  redis.call('XDEL', key, ARGV[at + 2])
  at = at + 3
end
while at <= #ARGV do
  local values = tonumber(ARGV[at + 1])
  redis.call('XADD', key, 'MAXLEN', '~', ARGV[2], ARGV[at], unpack(ARGV, at + 2, at + 1 + values))
  at = at + 2 + values
end
return false
"""


class StreamMoved(RedisError):
    """The stream does not end where this publisher last appended: it lost entries (a failover or a restart the
    connection did not fail through), or another relay appended meanwhile. Nothing was written."""


def _placed_ms(member: bytes) -> int:
    """When an erased copy's event was placed (0, to be trimmed, if it is not one)."""
    try:
        entry_id, _ = stream.unpack_entry(member)
    except ValueError:
        return 0
    return (EventId.parse(entry_id) or stream.ORIGIN).ms


class RedisPublisher:
    """Appends events to the stream under their own ids, skipping those the stream already has."""

    def __init__(self, client: redis.Redis, key: str, max_len: int) -> None:
        self._redis = client
        self._key = key
        self._erased_key = stream.erased_key(key)
        self._max_len = max_len
        self._top: EventId | None = None  # the stream's last id as far as we know; None: ask Redis
        self._append = client.register_script(APPEND_SCRIPT)

    async def _read_top(self) -> EventId:
        if not await self._redis.exists(self._key):
            return EventId(0, 0)
        info = await self._redis.xinfo_stream(self._key)
        ms, _, seq = info["last-generated-id"].partition(b"-")
        return EventId(int(ms), int(seq))

    def forget_top(self) -> None:
        """Ask Redis where the stream ends before the next append."""
        self._top = None

    async def read_top_if_unknown(self) -> EventId | None:
        """The stream's last id, if it had to be asked of Redis now (after a fault: a restart or a failover may
        have changed it); None while it is known."""
        if self._top is not None:
            return None
        try:
            self._top = await self._read_top()
        except BaseException:
            self._top = None
            raise
        return self._top

    async def probe(self) -> None:
        """A write as small as can be, refused as the stream's appends would be (OOM, READONLY, MISCONF, a paused
        or stalled server); raises REDIS_ERRORS."""
        await self._redis.set(f"{self._key}:probe", b"1", px=60_000)

    async def publish(self, entries: Sequence[Entry], erased: Sequence[Entry] = ()) -> None:
        """Append `entries` the stream lacks; before them, replace those of `erased` (redacted copies of entries)
        that it holds, in one script, so a reader sees both or neither (replacing again is harmless). Raises
        StreamMoved, writing nothing, if the stream does not end where this publisher last left it."""
        try:
            if self._top is None:
                self._top = await self._read_top()
            top = self._top
            fresh = [(event_id, fields) for event_id, fields in entries if event_id > top]
            if fresh:
                replaced = [(event_id, fields) for event_id, fields in erased if event_id <= top]
                args: list[bytes | str | int] = [str(top), self._max_len, len(replaced)]
                for event_id, fields in replaced:
                    args += (stream.pack_entry(str(event_id).encode(), fields), event_id.seq, str(event_id))
                for event_id, fields in fresh:
                    args += (str(event_id), 2 * len(fields))
                    for item in fields.items():
                        args += item
                moved: Any = await self._append(keys=[self._key, self._erased_key], args=args)
                if moved is not None:
                    raise StreamMoved(f"the stream ends at {moved.decode()}, not at {top} where this relay left it")
                self._top = fresh[-1][0]
        except BaseException:
            self._top = None  # a refused write, a lost connection, a stream that moved: ask again next time
            raise

    async def changes_after(self, after: EventId, upto: EventId, count: int) -> dict[str, EventId]:
        """The changes of the events the stream holds after `after` up to `upto` (at most `count` entries), by
        change key (svc_common.outbox.change_key), with their ids."""
        entries: Any = await self._redis.xrange(self._key, min=f"({after}", max=str(upto), count=count)
        found = {}
        for entry_id, fields in entries:
            event_id, raw = EventId.parse(entry_id), fields.get(stream.FIELD_EVENT)
            if event_id is None or raw is None:
                continue
            try:
                found[change_of(events_pb2.BookingEvent.FromString(raw))] = event_id
            except DecodeError:
                continue
        return found

    async def trim_older_than(self, cutoff_ms: int) -> None:
        """Remove entries placed before `cutoff_ms` (exactly: the outbox keeps what the stream keeps), and their
        erased copies (those before the oldest entry left are the candidates; ms and seq grow together)."""
        await self._redis.xtrim(self._key, minid=f"{cutoff_ms}-0", approximate=False)
        oldest: Any = await self._redis.xrange(self._key, count=1)
        first = EventId.parse(oldest[0][0]) if oldest else None
        candidates: Any = await self._redis.zrangebyscore(
            self._erased_key, "-inf", f"({first.seq}" if first else "+inf", withscores=True
        )
        expired = [seq for member, seq in candidates if _placed_ms(member) < cutoff_ms]
        if expired:
            await self._redis.zremrangebyscore(self._erased_key, "-inf", max(expired))
