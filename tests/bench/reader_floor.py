"""The floor of one stream reader per notify instance handing each event to its workers (bench_capacity's
readers part), in two processes whose CPU the bench counts apart:

    python -m tests.bench.reader_floor receive SOCKET             # a worker's side: each entry taken back
    python -m tests.bench.reader_floor follow REDIS_URL KEY SOCKET  # the reader: XREAD, each entry sent on

The reader follows the stream as a notify worker does (XREAD BLOCK from the newest entry, hiredis parsing) and
writes each entry, packed as one string (svc_common.eventstream.pack_entry), length-prefixed, to a Unix socket;
the receiver reads what arrives in one buffer and unpacks each entry. Nothing else: no decoding of the event, no
dispatch, no position checks. The receiver's CPU per event is the least a worker would pay per event in that
design, the reader's what the instance would pay once (with one worker to send to).
"""

from __future__ import annotations

import asyncio
import struct
import sys
from typing import Any

import redis.asyncio as redis
import uvloop

from svc_common import eventstream

FRAME = struct.Struct("!I")


async def follow(url: str, key: str, path: str) -> None:
    client = redis.Redis.from_url(url)
    _reader, writer = await asyncio.open_unix_connection(path)
    newest: Any = await client.xrevrange(key, count=1)
    position = newest[0][0] if newest else "0-0"
    while True:
        reply: Any = await client.xread({key: position}, block=1000, count=1000)
        for _key, entries in reply or ():
            frames = []
            for entry_id, fields in entries:
                packed = eventstream.pack_entry(entry_id, fields)
                frames.append(FRAME.pack(len(packed)))
                frames.append(packed)
                position = entry_id
            writer.write(b"".join(frames))
            await writer.drain()


async def receive(path: str) -> None:
    async def taken(reader: asyncio.StreamReader, _writer: asyncio.StreamWriter) -> None:
        buffer = b""
        while chunk := await reader.read(1 << 16):
            buffer += chunk
            at = 0
            while len(buffer) - at >= FRAME.size:
                (length,) = FRAME.unpack_from(buffer, at)
                if len(buffer) - at - FRAME.size < length:
                    break
                eventstream.unpack_entry(buffer[at + FRAME.size : at + FRAME.size + length])
                at += FRAME.size + length
            buffer = buffer[at:]

    server = await asyncio.start_unix_server(taken, path)
    async with server:
        await server.serve_forever()


def main() -> None:
    # On the event loop the services run on by default (EVENT_LOOP), as the bench's other floors.
    if sys.argv[1] == "follow":
        uvloop.run(follow(sys.argv[2], sys.argv[3], sys.argv[4]))
    else:
        uvloop.run(receive(sys.argv[2]))


if __name__ == "__main__":
    main()
