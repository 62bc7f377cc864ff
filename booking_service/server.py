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

import asyncpg
import redis.asyncio as redis

from booking_api.booking.v1 import booking_pb2, booking_pb2_grpc
from booking_service import metrics, pagination
from booking_service.database import LOST_CONNECTION, Database
from booking_service.domain import ERROR_DOMAIN
from booking_service.relay import EventRelay, RelayWaker
from booking_service.schedules import ScheduleUseCases
from booking_service.servicer import BookingServicer
from booking_service.settings import Settings
from booking_service.storage import Storage
from booking_service.usecases import BookingUseCases
from svc_common import eventstream, tracing
from svc_common.auth import TokenVerifier
from svc_common.backoff import Backoff
from svc_common.errors import CannotStart, ServiceError
from svc_common.grpc_server import GrpcServer, loop_name
from svc_common.principal import Principal, Role
from svc_common.redis_client import REDIS_ERRORS, connect, follow_failovers, sentinel_managed
from svc_common.supervisor import (
    SHUTDOWN_MARGIN_SECONDS,
    Supervisor,
    cancel_and_wait,
    exit_after,
    log_tasks_on_sigusr1,
    stop_event_on_signals,
)

log = logging.getLogger(__name__)

SERVICE_NAME = booking_pb2.DESCRIPTOR.services_by_name["BookingService"].full_name
# Who the audit trail names for the automatic retention purge.
RETENTION_ACTOR = Principal(id="system:retention", name="retention purge", role=Role.ADMIN)


class StoppedWhileStarting(Exception):
    """A stop signal came while the service was still waiting for (or being refused by) its database."""


async def _open_database(db: Database, owner_dsn: str | None, stop: asyncio.Event) -> None:
    """Connect and migrate, waiting for the database to come up (or for a stop signal). A refusal (privileges,
    authentication, an unknown database) is tried REFUSALS_BEFORE_GIVING_UP times (another instance may be
    granting, an operator creating the database), then the service gives up: CannotStart, status 2."""
    backoff = Backoff(0.5, 5.0)
    refusals = 0
    while True:
        try:
            await db.open()
            applied = await db.prepare_schema(owner_dsn)
            if applied:
                log.info("applied migrations: %s", ", ".join(applied))
            return
        except (*LOST_CONNECTION, asyncpg.PostgresError) as exc:
            await db.close()
            if not isinstance(exc, LOST_CONNECTION):
                refusals += 1
                if refusals >= REFUSALS_BEFORE_GIVING_UP:
                    raise CannotStart(
                        f"the database refuses what the service needs to start ({type(exc).__name__}: {exc}); "
                        f"{_REFUSAL_HINT}"
                    ) from exc
            delay = backoff.next()
            log.warning("database not reachable (%s: %s); retrying in %.1fs", type(exc).__name__, exc, delay)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await stop.wait()
            if stop.is_set():
                raise StoppedWhileStarting from exc


async def _redis_ok(client: redis.Redis) -> bool:
    try:
        return bool(await client.ping())
    except REDIS_ERRORS:
        return False


RELAY_TASKS = ("relay", "waker")
REFUSALS_BEFORE_GIVING_UP = 3
_REFUSAL_HINT = (
    "check DATABASE_URL's user, password and database, and that MIGRATION_DATABASE_URL names the schema's owner "
    "when DATABASE_URL's role may not create tables (docs/configuration.md)"
)


async def _watch_health(
    server: GrpcServer, db: Database, client: redis.Redis, relay: EventRelay, supervisor: Supervisor, interval: float
) -> None:
    """Health follows what calls would get: the service names the database, "events" Redis and the relay (which
    may find Redis answering pings but refusing its writes: full, read-only, paused)."""
    serving: bool | None = None
    events: bool | None = None
    while True:
        now, redis_now = await asyncio.gather(db.ping(), _redis_ok(client))
        metrics.DATABASE_UP.set(now)
        metrics.REDIS_UP.set(redis_now)
        metrics.POOL_IN_USE.set(db.connections_in_use())
        events_now = redis_now and not relay.blocked and not supervisor.failing(*RELAY_TASKS)
        if now != serving:
            log.log(logging.INFO if now else logging.WARNING, "database %s", "reachable" if now else "unreachable")
            await server.set_serving(now)
            serving = now
        if events_now != events:
            log.log(
                logging.INFO if events_now else logging.WARNING,
                "change events %s",
                "flowing"
                if events_now
                else "held back (Redis unreachable or the relay failing); they wait in the outbox",
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


async def _sweep_holds_periodically(usecases: BookingUseCases, interval: float) -> None:
    """Retire, every `interval` seconds, the holds whose expire_time has come (a write into an expired hold's slot
    does not wait for this: it retires the hold itself). Twice a second would flood the log while the database is
    down: a failure is logged when it starts and when it ends."""
    failing = False
    while True:
        try:
            count = await usecases.sweep_holds()
        except ServiceError as exc:  # the database is down or busy: try again next time
            if not failing:
                log.warning("hold sweep failed: %s; trying again every %gs", exc.message, interval)
            failing = True
        else:
            if failing:
                log.info("hold sweep works again")
            failing = False
            if count:
                log.debug("hold sweep retired %d expired holds", count)
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def running(settings: Settings, stop: asyncio.Event | None = None) -> AsyncIterator[GrpcServer]:
    """A started booking server; on exit it drains calls in flight and closes its pool."""
    stop = stop or asyncio.Event()
    db = Database(settings.database)
    server = GrpcServer(
        settings.server,
        verifier=TokenVerifier(settings.jwt_secret),
        error_domain=ERROR_DOMAIN,
        service_names=[SERVICE_NAME],
    )
    client = connect(settings.redis)
    relay = EventRelay(settings.relay, client, db.connector)
    waker = RelayWaker(relay, db)
    storage = Storage(db)
    usecases = BookingUseCases(
        storage,
        waker,
        pagination.PageTokens(pagination.derive_key(settings.jwt_secret)),
        hold_limits=settings.hold_limits,
    )
    booking_pb2_grpc.add_BookingServiceServicer_to_server(
        BookingServicer(usecases, ScheduleUseCases(storage, waker)), server.server
    )
    supervisor = Supervisor()

    async def events_held_back() -> None:
        await server.set_serving(False, names=[eventstream.HEALTH_NAME])

    async def health_unknown() -> None:
        await server.set_serving(False)
        await events_held_back()

    async with contextlib.AsyncExitStack() as stack:
        # Exit order: stop the background tasks, drain calls in flight (the relay still publishing what they
        # commit), stop the relay, then close the pool and the Redis client.
        stack.push_async_callback(client.aclose)
        stack.push_async_callback(db.close)
        relay_tasks: list[asyncio.Task[None]] = []  # started once the database is migrated
        stack.push_async_callback(_cancel_all, relay_tasks)
        # Listen first, reporting NOT_SERVING, so operators can see the service waiting for its database.
        await server.start()
        stack.push_async_callback(server.stop, settings.grace_seconds)
        await health_unknown()
        await _open_database(db, settings.migration_database_url, stop)
        relay_tasks.extend(
            supervisor.start(name, run, on_failure=events_held_back)
            for name, run in zip(RELAY_TASKS, (relay.run, waker.run), strict=True)
        )
        background = [
            supervisor.start(
                "health",
                lambda: _watch_health(server, db, client, relay, supervisor, settings.health_interval_seconds),
                on_failure=health_unknown,
            ),
        ]
        if sentinel_managed(client):
            background.append(
                supervisor.start("redis failovers", lambda: follow_failovers([client], metrics.REDIS_FAILOVERS))
            )
        if settings.retention_days > 0:
            retention = timedelta(days=settings.retention_days)
            background.append(
                supervisor.start(
                    "retention purge",
                    lambda: _purge_periodically(usecases, retention, settings.retention_interval_seconds),
                )
            )
        if settings.holds_sweep_seconds > 0:
            background.append(
                supervisor.start(
                    "hold sweep", lambda: _sweep_holds_periodically(usecases, settings.holds_sweep_seconds)
                )
            )
        stack.push_async_callback(_cancel_all, background)
        log.info("booking service listening on %s, event loop %s", settings.server.listen, loop_name())
        yield server


async def _cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        await cancel_and_wait(task)


async def serve(settings: Settings) -> None:
    stop = stop_event_on_signals()
    log_tasks_on_sigusr1()
    tracing.configure(settings.server.tracing)
    try:
        async with running(settings, stop):
            await stop.wait()
            log.info("stopping: draining calls in flight for up to %.0fs", settings.grace_seconds)
            exit_after(settings.grace_seconds + SHUTDOWN_MARGIN_SECONDS, "shutdown")
    except StoppedWhileStarting:
        log.info("stop asked while waiting for the database")
    except LOST_CONNECTION:
        if not stop.is_set():
            raise
    finally:
        tracing.shutdown()
    log.info("stopped")
