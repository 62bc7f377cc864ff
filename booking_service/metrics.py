"""The booking service's own metrics (svc_common.metrics serves them, summed over workers). Gauges only the
relaying process knows are reported by the highest value among live workers (the others report 0)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from prometheus_client import Counter, Gauge, Histogram

from svc_common.metrics import HOP_BUCKETS

DATABASE_UP = Gauge(
    "booking_database_up", "1 while every worker reaches PostgreSQL (its health check)", multiprocess_mode="livemin"
)
REDIS_UP = Gauge(
    "booking_redis_up", "1 while every worker reaches Redis (its health check)", multiprocess_mode="livemin"
)
POOL_IN_USE = Gauge(
    "booking_db_pool_connections_in_use", "Database connections in use by calls", multiprocess_mode="livesum"
)
OUTBOX_BACKLOG = Gauge(
    "booking_outbox_unpublished_events",
    "Committed change events not yet published to Redis (sampled by the relay every few seconds)",
    multiprocess_mode="livemax",
)
OUTBOX_OLDEST_AGE = Gauge(
    "booking_outbox_oldest_unpublished_age_seconds",
    "Age of the oldest committed change event not yet published (0: none waits)",
    multiprocess_mode="livemax",
)
EVENTS_PUBLISHED = Counter("booking_events_published", "Change events appended to the Redis stream by the relay")
RELAY_ROUNDS = Histogram(
    "booking_relay_round_seconds",
    "Relay rounds (place committed events, publish them) and how long each took",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
EVENT_HOPS = Histogram(
    "booking_event_hop_seconds",
    "The hops of a change through the relay, each from the one before: hop='placed' from the write's transaction "
    "(the event's occur_time) to its place in the stream (its event id's milliseconds: commit, waking the relay "
    "and its placing statement); 'published' from there to Redis acknowledging the XADD. Observed by the "
    "relaying worker when it publishes",
    ["hop"],
    buckets=HOP_BUCKETS,
)
_PLACED = EVENT_HOPS.labels("placed")
_PUBLISHED = EVENT_HOPS.labels("published")
PUBLISH_BLOCKED = Gauge(
    "booking_relay_publish_blocked",
    "1 while the relaying worker cannot publish to Redis (down, refusing writes, or stalled): events are placed "
    "in the outbox, which notify instances follow meanwhile",
    multiprocess_mode="livemax",
)
REPUBLISHED_AFTER_LOSS = Counter(
    "booking_events_republished_after_loss",
    "Events published again because the Redis stream ended before the published mark (a failover lost writes)",
)
SEAMS = Counter(
    "booking_relay_seams",
    "Seams the relay placed: positions skipped on purpose because the outbox it works on may lack events already "
    "published or read (a PostgreSQL failover to a standby missing the last transactions, or a stream ahead of "
    "the outbox)",
)
REDIS_FAILOVERS = Counter(
    "booking_redis_failovers", "Times the Redis primary named by Sentinel changed, as this process saw it"
)
STREAM_BEHIND_OUTBOX = Gauge(
    "booking_stream_behind_outbox_events",
    "Positions the outbox is ahead of the Redis stream while the relay cannot publish (0 when it publishes)",
    multiprocess_mode="livemax",
)


def events_published(placed: Sequence[tuple[datetime, int]], now: float) -> None:
    """Time the hops of events published at `now` (time.time()), given each one's (occur_time, stream ms)."""
    for occurred, stream_ms in placed:
        _PLACED.observe(max(0.0, stream_ms / 1000 - occurred.timestamp()))
        _PUBLISHED.observe(max(0.0, now - stream_ms / 1000))
