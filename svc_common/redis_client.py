"""How both services connect to Redis: short timeouts and no hidden retries, since each caller has its own
reconnect loop (a retry inside redis-py would only hide an outage and delay the caller's own handling)."""

from __future__ import annotations

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

# Redis unreachable (redis-py wraps socket errors in its ConnectionError) or refusing a command: callers back
# off and try again.
REDIS_ERRORS = (RedisError,)


def connect(url: str, *, timeout: float = 5.0) -> redis.Redis:
    """A client for `url` (connections are made lazily, so this never fails for a server that is down)."""
    client: redis.Redis = redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=min(timeout, 2.0),
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )
    return client
