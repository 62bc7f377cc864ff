"""How both services connect to Redis: one server (`redis://`, `rediss://`, `unix://`) or the primary a set of
Redis Sentinels names (`redis+sentinel://`), with every call bounded and no hidden retries.

Every call is bounded by REDIS_TIMEOUT_SECONDS (0.5 s by default), well under notify's fallback delay, so a
Redis that accepts connections but answers nothing (paused, stopped, swapping, a partition dropping packets)
is noticed as soon as a refused write; a blocking read gets its block time on top (`connect(block_seconds=)`).
There is no retry inside redis-py: each caller has its own reconnect loop, and a retry there would only hide a
fault and delay the caller's own handling.

With Sentinel, redis-py asks the sentinels for the primary whenever it opens a connection, and drops a
connection that gets a READONLY reply (a primary demoted by a failover) so the next call asks again: a failover
is followed within a call or two of the sentinels agreeing on the new primary. A managed Redis whose primary
endpoint moves by DNS on failover is followed the same way: a refused or READONLY connection is dropped and the
next one resolves the name again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import redis.asyncio as redis
from prometheus_client import Counter
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from svc_common.settings import REDIS_SCHEMES, Env

log = logging.getLogger(__name__)

# Redis unreachable (redis-py wraps socket errors in its ConnectionError), too slow (its TimeoutError), or
# refusing a command (OOM, READONLY, MISCONF, NOSCRIPT: ResponseError): callers back off and try again.
REDIS_ERRORS = (RedisError,)
SENTINEL_SCHEME = "redis+sentinel"
DEFAULT_TIMEOUT_SECONDS = 0.5


@dataclass(frozen=True)
class SentinelTarget:
    """What a `redis+sentinel://[[user]:password@]host:port[,host:port...]/service_name[/db]` URL names."""

    sentinels: tuple[tuple[str, int], ...]
    service_name: str
    db: int = 0
    username: str | None = None
    password: str | None = None  # the data nodes' (REDIS_SENTINEL_PASSWORD is the sentinels')

    @classmethod
    def parse(cls, url: str) -> SentinelTarget:
        """The target `url` names; ValueError saying what is wrong if it names none."""
        scheme, sep, rest = url.partition("://")
        if scheme != SENTINEL_SCHEME or not sep:
            raise ValueError(f"not a {SENTINEL_SCHEME}:// URL")
        authority, _, path = rest.partition("/")
        credentials, at, hosts = authority.rpartition("@")
        username = password = None
        if at:
            user, colon, secret = credentials.partition(":")
            username, password = (unquote(user) or None), (unquote(secret) if colon else None)
        sentinels = tuple(_host_port(part) for part in hosts.split(","))
        service, _, db = path.partition("/")
        if not service:
            raise ValueError("the URL names no service (…/service_name)")
        if db and not db.isdigit():
            raise ValueError(f"the database must be a number, got {db!r}")
        return cls(sentinels, unquote(service), int(db or 0), username, password)


def _host_port(text: str) -> tuple[str, int]:
    host, colon, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")  # [::1]:26379
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"each sentinel must be host:port, got {text!r}")
    return host, int(port)


@dataclass(frozen=True)
class RedisConfig:
    url: str
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    sentinel_password: str = ""  # REDIS_SENTINEL_PASSWORD: for sentinels that require one

    @classmethod
    def read(cls, env: Env, *, most_timeout: float = 10.0) -> RedisConfig:
        url = env.url("REDIS_URL", REDIS_SCHEMES, required=True, forms={SENTINEL_SCHEME: _check_sentinel_url})
        return cls(
            url=url,
            timeout_seconds=env.number("REDIS_TIMEOUT_SECONDS", cls.timeout_seconds, above=0, most=most_timeout),
            sentinel_password=env.optional_secret("REDIS_SENTINEL_PASSWORD"),
        )


def _check_sentinel_url(url: str) -> None:
    try:
        SentinelTarget.parse(url)
    except ValueError as exc:
        raise ValueError(
            f"{exc} (expected {SENTINEL_SCHEME}://[[user]:password@]host:port[,...]/service[/db])"
        ) from exc


class _FollowingPool(SentinelConnectionPool):
    """A pool of connections to the primary the sentinels name that closes a connection to any other one as it
    comes back (`named_primary`, kept by follow_failovers). A call in flight keeps its connection through a
    failover, and a blocking reader takes it again at once: without this, a reader stays on a primary that a
    graceful failover (SENTINEL FAILOVER) replaced but that answers as one, with none of the new writes, until
    Sentinel turns it into a replica (when it next reads its INFO, up to 10 s later)."""

    named_primary: tuple[str, int] | None = None

    async def release(self, connection: Any) -> None:
        named = self.named_primary
        if named is not None and (connection.host, connection.port) != named:
            connection.mark_for_reconnect()  # closed by the release, reconnected to the named one when next used
        await super().release(connection)


class _SentinelManaged(redis.Redis):
    """A client of the primary the sentinels name; closing it closes its connections to the sentinels too."""

    sentinels: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        try:
            await super().aclose(close_connection_pool)
        finally:
            if self.sentinels is not None:
                await self.sentinels.aclose()


def connect(config: RedisConfig, *, block_seconds: float = 0.0) -> redis.Redis:
    """A client for `config` whose every call is bounded by its timeout (plus `block_seconds`, for a client made
    for blocking reads). Connections are made lazily, so this never fails for a server that is down."""
    timeout = config.timeout_seconds
    options: dict[str, Any] = {
        "socket_timeout": timeout + block_seconds,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 0,
    }
    if not config.url.startswith(f"{SENTINEL_SCHEME}://"):
        client: redis.Redis = redis.Redis.from_url(config.url, **options)
        return client
    target = SentinelTarget.parse(config.url)
    sentinel = Sentinel(  # type: ignore[no-untyped-call,unused-ignore]  # typed from redis 8.2
        target.sentinels,
        sentinel_kwargs={
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "retry": Retry(NoBackoff(), 0),
            "password": config.sentinel_password or None,
        },
    )
    managed: _SentinelManaged = sentinel.master_for(
        target.service_name,
        redis_class=_SentinelManaged,
        connection_pool_class=_FollowingPool,
        username=target.username,
        password=target.password,
        db=target.db,
        **options,
    )
    managed.sentinels = sentinel
    return managed


def sentinel_managed(client: redis.Redis) -> bool:
    return isinstance(client.connection_pool, SentinelConnectionPool)


async def follow_failovers(clients: Sequence[redis.Redis], failovers: Counter, interval: float = 1.0) -> None:
    """With Sentinel: ask the sentinels every `interval` which primary they name; on a change, count it (a
    failover seen), log it, and drop the idle connections to the old one. A call in flight keeps its connection
    (dropping it under redis-py mid-call is not safe) until it comes back to the pool, which then closes it
    (_FollowingPool), so a blocking read leaves the old primary within its block time."""
    pools = [client.connection_pool for client in clients if isinstance(client.connection_pool, SentinelConnectionPool)]
    assert pools, "not Sentinel-managed clients"
    last: tuple[str, int] | None = None
    while True:
        try:
            host, port = await pools[0].sentinel_manager.discover_master(pools[0].service_name)
            named: tuple[str, int] | None = (str(host), int(port))
        except REDIS_ERRORS:
            named = None  # no sentinel answers, or none names a primary: ask again
        if named is not None:
            for pool in pools:
                if isinstance(pool, _FollowingPool):
                    pool.named_primary = named
            if last is not None and named != last:
                failovers.inc()
                log.warning("Sentinel names a new Redis primary: %s:%d (was %s:%d)", *named, *last)
                for pool in pools:
                    await pool.disconnect(inuse_connections=False)
            last = named
        await asyncio.sleep(interval)
