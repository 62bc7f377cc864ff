"""The database connection pool: its lifecycle, the schema's preparation, and running work with bounded retries.

Transient failures (connection lost or refused, serialization failure, deadlock) are retried a bounded number
of times, then surface as Unavailable or Aborted. A write that lost its connection may have committed: the
caller passes a `committed` check (see `Database.run`), so storage returns what the first attempt committed
instead of doing the work twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import asyncpg

from booking_service import schema
from svc_common.backoff import Backoff
from svc_common.errors import Aborted, Unavailable
from svc_common.postgres import DEFAULT_CONNECT_TIMEOUT_SECONDS, Connector

log = logging.getLogger(__name__)

T = TypeVar("T")
Record = asyncpg.Record
if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    Connection = PoolConnectionProxy[Record]
else:
    Connection = asyncpg.pool.PoolConnectionProxy


class DatabaseRefused(Exception):
    """The server answered but refused a new connection."""


# Errors after which the statement certainly did not commit and may simply run again.
RETRYABLE_ROLLBACK = (asyncpg.SerializationError, asyncpg.DeadlockDetectedError)
# The server is read-only (SQLSTATE 25006): a standby, or a primary demoted by a failover. Nothing was written;
# the connection is dropped and the work runs again on a new one, which goes to the host that takes writes.
READ_ONLY = asyncpg.ReadOnlySQLTransactionError


# Errors that mean the database is unreachable or the connection gone; a write may or may not have committed.
# asyncpg raises InternalClientError ("cannot switch to state ...") when the server ends a connection in the
# middle of an operation.
CONNECTION_ERRORS = (
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    asyncpg.InternalClientError,
    DatabaseRefused,
    OSError,
    TimeoutError,
)
# For work on a connection of its own (the relay, health, notifications): an InterfaceError there also means
# the connection is unusable ("connection is closed", "another operation is in progress").
LOST_CONNECTION = (*CONNECTION_ERRORS, asyncpg.InterfaceError)


@dataclass(frozen=True)
class DatabaseConfig:
    dsn: str
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_SECONDS  # per host (svc_common.postgres)
    min_connections: int = 2
    max_connections: int = 10
    command_timeout: float = 10.0
    acquire_timeout: float = 5.0
    attempts: int = 3
    retry_backoff: float = 0.05
    close_seconds: float = 3.0  # on shutdown, how long connections in use may take before they are terminated


async def release_connection(conn: asyncpg.Connection[Record]) -> None:
    """Pool reset on release. Storage never changes session state (no SET, LISTEN, cursors or held locks) and
    runs single autocommit statements, so only a transaction left open by a failure needs undoing; asyncpg's
    default reset would cost every call a second round trip."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


class Database:
    def __init__(self, config: DatabaseConfig) -> None:
        self._config = config
        self._pool: asyncpg.Pool[Record] | None = None
        # Shared by the pool and the relay's own connection: each host in turn, the last that answered first.
        self.connector = Connector(config.dsn, config.connect_timeout)

    @property
    def pool(self) -> asyncpg.Pool[Record]:
        if self._pool is None:
            raise Unavailable("the database is not connected yet; retry later", reason="DATABASE_UNAVAILABLE")
        return self._pool

    async def open(self) -> None:
        self._pool = await asyncpg.create_pool(
            self._config.dsn,
            connect=self.connector,
            min_size=self._config.min_connections,
            max_size=self._config.max_connections,
            command_timeout=self._config.command_timeout,
            server_settings={"timezone": "UTC", "application_name": "booking_service"},
            reset=release_connection,
        )

    def connections_in_use(self) -> int:
        """Pool connections acquired by calls right now (0 before the pool opens)."""
        if self._pool is None:
            return 0
        return self._pool.get_size() - self._pool.get_idle_size()

    async def close(self) -> None:
        """Close the pool, waiting up to `close_seconds` for connections in use, then terminating them."""
        timeout = self._config.close_seconds
        if self._pool is None:
            return
        pool, self._pool = self._pool, None
        try:
            async with asyncio.timeout(timeout):
                await pool.close()
        except TimeoutError:
            log.warning("database connections still busy after %.0fs; terminating them", timeout)
            pool.terminate()
        except BaseException:
            pool.terminate()
            raise

    async def prepare_schema(self, owner_dsn: str | None) -> list[str]:
        """Apply pending migrations (as the owner, when given) and return what was applied (see schema.py)."""
        async with self.pool.acquire() as conn:
            return await schema.prepare(conn, owner_dsn, self._config.connect_timeout)

    async def ping(self) -> bool:
        """Whether a pooled connection answers; if not, the pool's connections are all replaced as they are next
        used (a host that stopped answering, or a failover: new ones go to whichever host takes writes now)."""
        try:
            async with self.pool.acquire(timeout=self._config.acquire_timeout) as conn:
                await conn.fetchval("SELECT 1", timeout=self._config.acquire_timeout)
        except (*LOST_CONNECTION, asyncpg.PostgresError):
            await self._renew()
            return False
        return True

    async def _renew(self) -> None:
        """Replace every pooled connection when it is next acquired (those in use when they are released)."""
        if self._pool is not None:
            await self._pool.expire_connections()

    async def notify(self, channel: str) -> None:
        """Send a notification on `channel`, best effort (a listener that misses it has its own backstop)."""
        try:
            async with self.pool.acquire(timeout=self._config.acquire_timeout) as conn:
                await conn.execute("SELECT pg_notify($1, '')", channel)
        except (*LOST_CONNECTION, asyncpg.PostgresError, Unavailable) as exc:
            log.debug("notification on %s not sent: %s", channel, type(exc).__name__)

    async def _acquire(self) -> Connection:
        try:
            conn: Connection = await self.pool.acquire(timeout=self._config.acquire_timeout)
        except asyncpg.PostgresError as exc:
            if isinstance(exc, CONNECTION_ERRORS):
                raise
            # The server refused a new connection (a database not accepting connections, a role or database
            # that is gone): as unavailable as a server that is down, not a bug.
            raise DatabaseRefused(f"the database refused a connection ({exc.sqlstate})") from exc
        return conn

    async def run(
        self,
        work: Callable[[Connection], Awaitable[T]],
        *,
        committed: Callable[[Connection], Awaitable[T | None]] | None = None,
    ) -> T:
        """Run `work` on a pooled connection, retrying transient failures a bounded number of times.

        `committed` tells, after a lost connection, whether the lost attempt committed (and its result).
        """
        last: Exception | None = None
        uncertain = False
        backoff = Backoff(self._config.retry_backoff, 1.0)
        for attempt in range(self._config.attempts):
            if attempt:
                await backoff.sleep()
            try:
                conn = await self._acquire()
                try:
                    if uncertain and committed is not None:
                        earlier = await committed(conn)
                        if earlier is not None:
                            return earlier
                    return await work(conn)
                except (asyncpg.InterfaceError, asyncpg.InternalClientError) as exc:
                    # The connection closed under us, or its protocol state broke because the server ended it
                    # mid-operation: a lost connection, never to be reused. (Other InterfaceErrors, such as
                    # DataError, are bugs.)
                    if not (conn.is_closed() or isinstance(exc, asyncpg.InternalClientError)):
                        raise
                    conn.terminate()
                    raise asyncpg.ConnectionDoesNotExistError("connection lost") from exc
                finally:
                    await self.pool.release(conn)
            except RETRYABLE_ROLLBACK as exc:
                last = exc
            except READ_ONLY as exc:  # a standby took the connection: the next ones try the other hosts first
                last = exc
                self.connector.pass_over()
                await self._renew()
            except CONNECTION_ERRORS as exc:
                last, uncertain = exc, True
                await self._renew()  # the host may be gone or frozen: its other connections are no better
            log.warning("database attempt %d failed: %s", attempt + 1, type(last).__name__)
        if isinstance(last, RETRYABLE_ROLLBACK):
            raise Aborted("the change conflicted with a concurrent one; retry", reason="CONCURRENT_MODIFICATION")
        raise Unavailable("the database is unavailable; retry later", reason="DATABASE_UNAVAILABLE") from last
