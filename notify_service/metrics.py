"""The notify service's own metrics (svc_common.metrics serves them; summed over workers)."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import Counter, Gauge, Histogram

from notify_service.hub import Event, Round, Subscriber
from svc_common.metrics import HOP_BUCKETS

EVENTS_FROM_POSTGRES = Gauge(
    "notify_events_from_postgres",
    "Processes reading events from the outbox in PostgreSQL because Redis cannot be read (0: all on Redis)",
    multiprocess_mode="livesum",
)
EVENT_SOURCE_SWITCHES = Counter(
    "notify_event_source_switches",
    "Switches of where events are read from: to='postgres' when Redis cannot be read, to='redis' when it is back",
    ["to"],
)
SUBSCRIPTIONS_OPEN = Gauge("notify_subscriptions_open", "Subscribe streams open", multiprocess_mode="livesum")
SUBSCRIPTIONS_ENDED = Counter(
    "notify_subscriptions_ended",
    "Subscribe streams ended, by why: SLOW_CONSUMER, CURSOR_EXPIRED, SHUTTING_DOWN, CANCELLED (by the client)",
    ["reason"],
)
EVENTS_DELIVERED = Counter("notify_events_delivered", "Events written to subscribers (counted about once a second)")
RESPONSES_WRITTEN = Counter(
    "notify_responses_written", "Subscribe responses written, each carrying one or more events (about once a second)"
)
READ_LAG = Gauge(
    "notify_stream_read_lag_seconds",
    "Now minus when the newest event read had been given its stream position (its id's milliseconds)",
    multiprocess_mode="livemax",
)

EVENT_HOPS = Histogram(
    "notify_event_hop_seconds",
    "The hops of a change through this process, each from the one before: hop='read' from the change's place in "
    "the stream (its event id's milliseconds, given by the relay) to its read by this process, per event; "
    "'first_write' from that read to the start of the first subscriber write carrying it (its response handed to "
    "grpc), 'last_write' to the end of the last one, per batch read. source: where it was read from ('redis', or "
    "'postgres' while notify follows the outbox)",
    ["hop", "source"],
    buckets=HOP_BUCKETS,
)
SOURCES = ("redis", "postgres")
_READ = {source: EVENT_HOPS.labels("read", source) for source in SOURCES}
_FIRST_WRITE = {source: EVENT_HOPS.labels("first_write", source) for source in SOURCES}
_LAST_WRITE = {source: EVENT_HOPS.labels("last_write", source) for source in SOURCES}

SEAMS_PASSED = Counter(
    "notify_stream_seams_passed",
    "Seams the stream reader passed: positions that jump on purpose where the relay found the outbox lacking "
    "events already handed out (a PostgreSQL failover)",
)
REDIS_FAILOVERS = Counter(
    "notify_redis_failovers", "Times the Redis primary named by Sentinel changed, as this process saw it"
)


def count_deliveries(subscribers: Iterable[Subscriber]) -> None:
    """Add what `subscribers` were handed since last counted to the delivery counters (one inc each, not one
    per write: the write path stays as it is)."""
    events = responses = 0
    for subscriber in subscribers:
        counted_events, counted_responses = subscriber.reported
        events += subscriber.delivered - counted_events
        responses += subscriber.responses - counted_responses
        subscriber.reported = (subscriber.delivered, subscriber.responses)
    if events:
        EVENTS_DELIVERED.inc(events)
    if responses:
        RESPONSES_WRITTEN.inc(responses)


def events_read(events: list[Event], source: str, now: float) -> None:
    """Time the 'read' hop of `events`, read at `now` (time.time(): the relay's clock made their ids)."""
    read = _READ[source]
    for event in events:
        if event.payload is not None:
            read.observe(max(0.0, now - event.id.ms / 1000))


def round_written(round_: Round) -> None:
    """Time the 'first_write' and 'last_write' hops of a batch read (notify_service.hub.Round)."""
    assert round_.first is not None and round_.last is not None
    _FIRST_WRITE[round_.source].observe(round_.first - round_.read_at)
    _LAST_WRITE[round_.source].observe(round_.last - round_.read_at)
