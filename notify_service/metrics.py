"""The notify service's own metrics (svc_common.metrics serves them; summed over workers)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

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
