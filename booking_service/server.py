"""Wiring only: storage, use cases, servicer, event relay, health, reflection, signals and shutdown.

Health: the overall status ("") and booking.v1.BookingService follow the database, since without it nothing
works; "events" follows Redis, since while it is down bookings are still served and their change events wait in
the outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import redis.asyncio as redis

from booking.v1 import booking_pb2, booking_pb2_grpc
from booking_service import pagination
from booking_service.domain import ERROR_DOMAIN
from booking_service.events import EventRelay, RelayConfig, RelayWaker
from booking_service.servicer import BookingServicer
from booking_service.settings import Settings
from booking_service.storage import CONNECTION_ERRORS, Storage, StorageConfig
from booking_service.usecases import BookingUseCases
from svc_common import eventstream
from svc_common.auth import Principal, Role, TokenVerifier
from svc_common.errors import ServiceError
from svc_common.grpc_server import GrpcServer, cancel_and_wait, stop_event_on_signals
from svc_common.redis_client import REDIS_ERRORS, connect

log = logging.getLogger(__name__)

SERVICE_NAME = booking_pb2.DESCRIPTOR.services_by_name["BookingService"].full_name
# Who the audit trail names for the automatic retention purge.
RETENTION_ACTOR = Principal(id="system:retention", name="retention purge", role=Role.ADMIN)


async def _open_storage(storage: Storage, stop: asyncio.Event) -> None:
    """Connect and migrate, waiting for the database to come up (or for a stop signal)."""
    delay = 0.5
    while True:
        try:
            await storage.open()
            applied = await storage.migrate()
            if applied:
                log.info("applied migrations: %s", ", ".join(applied))
            return
        except CONNECTION_ERRORS as exc:
            await storage.close()
            log.warning("database not reachable (%s); retrying in %.1fs", type(exc).__name__, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            if stop.is_set():
                raise
            delay = min(delay * 2, 5.0)


async def _redis_ok(client: redis.Redis) -> bool:
    try:
        return bool(await client.ping())
    except REDIS_ERRORS:
        return False


async def _watch_health(server: GrpcServer, storage: Storage, client: redis.Redis, interval: float) -> None:
    serving: bool | None = None
    events: bool | None = None
    while True:
        now, events_now = await asyncio.gather(storage.ping(), _redis_ok(client))
        if now != serving:
            log.log(logging.INFO if now else logging.WARNING, "database %s", "reachable" if now else "unreachable")
            await server.set_serving(now)
            serving = now
        if events_now != events:
            log.log(
                logging.INFO if events_now else logging.WARNING,
                "Redis %s",
                "reachable" if events_now else "unreachable: change events wait in the outbox",
            )
            await server.set_serving(events_now, names=[eventstream.HEALTH_NAME])
            events = events_now
        await asyncio.sleep(interval)


async def _purge_periodically(usecases: BookingUseCases, retention: timedelta, interval: float) -> None:
    """Hard-delete, every `interval` seconds, the bookings soft-deleted longer than `retention` ago."""
    while True:
        try:
            count, _ = await usecases.purge(RETENTION_ACTOR, datetime.now(UTC) - retention, force=True)
        except ServiceError as exc:  # the database is down or busy: try again next time
            log.warning("retention purge failed: %s", exc.message)
        else:
            if count:
                log.info("retention purge removed %d bookings deleted more than %s ago", count, retention)
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def running(settings: Settings, stop: asyncio.Event | None = None) -> AsyncIterator[GrpcServer]:
    """A started booking server; on exit it drains calls in flight and closes its pool."""
    stop = stop or asyncio.Event()
    storage = Storage(
        StorageConfig(
            dsn=settings.database_url,
            min_connections=settings.db_min_connections,
            max_connections=settings.db_max_connections,
            attempts=settings.db_attempts,
        )
    )
    server = GrpcServer(
        listen=settings.listen,
        verifier=TokenVerifier(settings.jwt_secret),
        error_domain=ERROR_DOMAIN,
        service_names=[SERVICE_NAME],
    )
    client = connect(settings.redis_url)
    relay = EventRelay(
        RelayConfig(
            dsn=settings.database_url,
            stream_key=settings.stream_key,
            max_len=settings.stream_max_len,
            max_age_seconds=settings.stream_max_age_seconds,
            sweep_seconds=settings.relay_sweep_seconds,
        ),
        client,
    )
    waker = RelayWaker(relay, storage)
    usecases = BookingUseCases(storage, waker, pagination.PageTokens(pagination.derive_key(settings.jwt_secret)))
    booking_pb2_grpc.add_BookingServiceServicer_to_server(BookingServicer(usecases), server.server)
    async with contextlib.AsyncExitStack() as stack:
        # Exit order: stop the background tasks, drain calls in flight (the relay still publishing what they
        # commit), stop the relay, then close the pool and the Redis client.
        stack.push_async_callback(client.aclose)
        stack.push_async_callback(storage.close)
        relay_tasks: list[asyncio.Task[None]] = []  # started once the database is migrated
        stack.push_async_callback(_cancel_all, relay_tasks)
        # Listen first, reporting NOT_SERVING, so operators can see the service waiting for its database.
        await server.start()
        stack.push_async_callback(server.stop, settings.grace_seconds)
        await server.set_serving(False)
        await server.set_serving(False, names=[eventstream.HEALTH_NAME])
        await _open_storage(storage, stop)
        relay_tasks.extend((asyncio.create_task(relay.run()), asyncio.create_task(waker.run())))
        health = asyncio.create_task(_watch_health(server, storage, client, settings.health_interval_seconds))
        stack.push_async_callback(cancel_and_wait, health)
        if settings.retention_days > 0:
            purge = asyncio.create_task(
                _purge_periodically(
                    usecases, timedelta(days=settings.retention_days), settings.retention_interval_seconds
                )
            )
            stack.push_async_callback(cancel_and_wait, purge)
        log.info("booking service listening on %s", settings.listen)
        yield server


async def _cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        await cancel_and_wait(task)


async def serve(settings: Settings) -> None:
    stop = stop_event_on_signals()
    try:
        async with running(settings, stop):
            await stop.wait()
            log.info("stopping: draining calls in flight for up to %.0fs", settings.grace_seconds)
    except CONNECTION_ERRORS:
        if not stop.is_set():
            raise
    log.info("stopped")
