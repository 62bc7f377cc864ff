"""notify's event path wired as notify_service.server wires it, for tests that drive it with stand-ins for Redis
and PostgreSQL."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as redis

from notify_service.fallback import Outbox
from notify_service.history import History
from notify_service.hub import Hub
from notify_service.lag import OutboxLag
from notify_service.source import EventSource, OnChange
from notify_service.stream import StreamReader


@dataclass(frozen=True)
class EventPath:
    source: EventSource
    reader: StreamReader
    history: History


def event_path(
    client: redis.Redis,
    key: str,
    hub: Hub,
    *,
    outbox: Outbox | None = None,
    fallback_after: float = 2.0,
    on_change: OnChange | None = None,
    block_ms: int = 1000,
) -> EventPath:
    source = EventSource(client, key, hub, OutboxLag(fallback_after), outbox=outbox, on_change=on_change)
    reader = StreamReader(client, key, hub, source, block_ms=block_ms)
    return EventPath(source, reader, History(client, key, hub, source))
