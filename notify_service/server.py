"""Wiring only: Redis client, stream reader, hub, servicer, health, reflection, signals and shutdown.

Health: the overall status ("") and notify.v1.NotifyService are SERVING while the instance accepts
subscriptions; "events" follows whether events can be read, from the Redis stream or, while that cannot be
read, from the outbox in PostgreSQL (DATABASE_URL; notify_service.fallback); "redis" whether they come from the
stream. While neither can be read, subscribers wait.
On SIGTERM the instance reports NOT_SERVING, ends every open stream with UNAVAILABLE `SHUTTING_DOWN` (clients
resume on another instance with their cursor) and stops within its grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from notify_service import metrics
from notify_service.fallback import OutboxReader
from notify_service.history import History
from notify_service.hub import Hub
from notify_service.lag import OutboxLag
from notify_service.limits import StreamCounts
from notify_service.servicer import SERVICE_NAME, NotifyServicer
from notify_service.settings import Settings
from notify_service.source import EventSource
from notify_service.stream import StreamReader
from notify_service.subscriptions import Subscriptions
from svc_common import eventstream, grpc_metrics, tracing
from svc_common.auth import TokenVerifier
from svc_common.errors import Unavailable
from svc_common.grpc_server import GrpcServer, loop_name
from svc_common.postgres import Connector
from svc_common.redis_client import connect, follow_failovers, sentinel_managed
from svc_common.supervisor import (
    SHUTDOWN_MARGIN_SECONDS,
    Supervisor,
    cancel_and_wait,
    exit_after,
    log_tasks_on_sigusr1,
    stop_event_on_signals,
)

log = logging.getLogger(__name__)

ERROR_DOMAIN = "notify.v1"
# Health name that says which path events come by: SERVING while from the Redis stream, NOT_SERVING while
# from the outbox in PostgreSQL (or from nowhere: then "events" is NOT_SERVING too).
STREAM_HEALTH_NAME = "redis"
DELIVERY_COUNT_SECONDS = 1.0  # how often deliveries (and grpc_server_msg_sent_total) are added to the metrics


@dataclass(frozen=True)
class Running:
    port: int
    hub: Hub


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Running]:
    """A started notify server; on exit it ends open streams, then stops."""
    client = connect(settings.redis)
    block_ms = 1000
    blocking = connect(settings.redis, block_seconds=block_ms / 1000)  # the stream reader's XREAD BLOCK
    hub = Hub(settings.history_window, on_written=metrics.round_written)
    lag = OutboxLag(settings.fallback_after_seconds)
    outbox = (
        OutboxReader(Connector(settings.database_url, settings.database_connect_timeout), on_placed=lag.placed_notice)
        if settings.database_url
        else None
    )
    if outbox is None:
        log.warning("DATABASE_URL is not set: while Redis cannot be read, subscribers wait for it")
    server = GrpcServer(
        settings.server,
        verifier=TokenVerifier(settings.jwt_secret),
        error_domain=ERROR_DOMAIN,
        service_names=[SERVICE_NAME],
    )

    async def report_health(readable: bool, path: str) -> None:
        await server.set_serving(readable, names=[eventstream.HEALTH_NAME])
        await server.set_serving(readable and path == "redis", names=[STREAM_HEALTH_NAME])

    source = EventSource(client, settings.stream_key, hub, lag, outbox=outbox, on_change=report_health)
    reader = StreamReader(
        client, settings.stream_key, hub, source, block_ms=block_ms, window=settings.history_window, blocking=blocking
    )
    subscriptions = Subscriptions(hub, History(client, settings.stream_key, hub, source), settings.subscriptions)
    servicer = NotifyServicer(subscriptions, StreamCounts(settings.stream_bounds))
    server.server.add_generic_rpc_handlers((servicer.handler(),))

    async def shut_down() -> None:
        await server.health.enter_graceful_shutdown()
        hub.close(Unavailable("the server is shutting down; resume on another instance", reason="SHUTTING_DOWN"))
        await server.stop(settings.grace_seconds)

    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(client.aclose)
        stack.push_async_callback(blocking.aclose)
        await server.set_serving(False, names=[eventstream.HEALTH_NAME, STREAM_HEALTH_NAME])
        port = await server.start()
        stack.push_async_callback(shut_down)
        await server.set_serving(True)
        supervisor = Supervisor()
        if outbox is not None:  # kept open, to hear when the stream falls behind it (notify_service.lag)
            listening = supervisor.start("outbox listener", outbox.run)
            stack.push_async_callback(cancel_and_wait, listening)
        reading = supervisor.start("stream reader", reader.run, on_failure=reader.lost)
        stack.push_async_callback(cancel_and_wait, reading)
        if sentinel_managed(client):
            following = supervisor.start(
                "redis failovers", lambda: follow_failovers([client, blocking], metrics.REDIS_FAILOVERS)
            )
            stack.push_async_callback(cancel_and_wait, following)
        counting = supervisor.start("delivery metrics", lambda: _count_deliveries(hub))
        stack.push_async_callback(cancel_and_wait, counting)
        log.info(
            "notify service listening on %s, stream %r, event loop %s",
            settings.server.listen,
            settings.stream_key,
            loop_name(),
        )
        yield Running(port, hub)


async def _count_deliveries(hub: Hub) -> None:
    """Add to the metrics, every DELIVERY_COUNT_SECONDS, what was delivered since (counted in bulk, not per write)."""
    while True:
        await asyncio.sleep(DELIVERY_COUNT_SECONDS)
        metrics.count_deliveries(hub.subscribers)
        grpc_metrics.flush_sent()


async def serve(settings: Settings) -> None:
    stop = stop_event_on_signals()
    log_tasks_on_sigusr1()
    tracing.configure(settings.server.tracing)
    try:
        async with running(settings):
            await stop.wait()
            log.info("stopping: ending open streams, grace %.0fs", settings.grace_seconds)
            exit_after(settings.grace_seconds + SHUTDOWN_MARGIN_SECONDS, "shutdown")
    finally:
        tracing.shutdown()
    log.info("stopped")
