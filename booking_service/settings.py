"""The booking service's settings, read once from the environment (tests pass their own mapping)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from svc_common import settings as env
from svc_common.auth import MIN_SECRET_BYTES
from svc_common.eventstream import DEFAULT_STREAM_KEY

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_GRACE_SECONDS = 10.0
DEFAULT_HEALTH_INTERVAL_SECONDS = 2.0
DEFAULT_RETENTION_INTERVAL_SECONDS = 3600.0
DEFAULT_STREAM_MAX_LEN = 1_000_000
DEFAULT_STREAM_MAX_AGE_SECONDS = 86_400.0
DEFAULT_RELAY_SWEEP_SECONDS = 1.0


@dataclass(frozen=True)
class Settings:
    database_url: str
    redis_url: str
    jwt_secret: str
    listen: str = DEFAULT_LISTEN
    db_min_connections: int = 2
    db_max_connections: int = 10
    db_attempts: int = 3
    grace_seconds: float = DEFAULT_GRACE_SECONDS
    health_interval_seconds: float = DEFAULT_HEALTH_INTERVAL_SECONDS
    retention_days: float = 0.0  # 0: no automatic purge
    retention_interval_seconds: float = DEFAULT_RETENTION_INTERVAL_SECONDS
    stream_key: str = DEFAULT_STREAM_KEY
    stream_max_len: int = DEFAULT_STREAM_MAX_LEN  # change events kept in Redis, by count ...
    stream_max_age_seconds: float = DEFAULT_STREAM_MAX_AGE_SECONDS  # ... and by age
    relay_sweep_seconds: float = DEFAULT_RELAY_SWEEP_SECONDS
    migration_database_url: str | None = None  # the owner role's URL; None: DATABASE_URL's role migrates

    @classmethod
    def from_env(cls, environ: Mapping[str, str], *, listen: str | None = None) -> Settings:
        return cls(
            database_url=env.require(environ, "DATABASE_URL"),
            redis_url=env.require(environ, "REDIS_URL"),
            jwt_secret=env.secret(environ, "JWT_SECRET", min_bytes=MIN_SECRET_BYTES),
            listen=listen or DEFAULT_LISTEN,
            db_min_connections=env.integer(environ, "DB_MIN_CONNECTIONS", 2),
            db_max_connections=env.integer(environ, "DB_MAX_CONNECTIONS", 10),
            db_attempts=env.integer(environ, "DB_ATTEMPTS", 3),
            grace_seconds=env.number(environ, "SHUTDOWN_GRACE_SECONDS", DEFAULT_GRACE_SECONDS),
            health_interval_seconds=env.number(environ, "HEALTH_INTERVAL_SECONDS", DEFAULT_HEALTH_INTERVAL_SECONDS),
            retention_days=env.number(environ, "RETENTION_DAYS", 0.0),
            retention_interval_seconds=env.number(
                environ, "RETENTION_INTERVAL_SECONDS", DEFAULT_RETENTION_INTERVAL_SECONDS
            ),
            stream_key=env.text(environ, "EVENT_STREAM_KEY", DEFAULT_STREAM_KEY),
            stream_max_len=env.integer(environ, "EVENT_STREAM_MAX_LEN", DEFAULT_STREAM_MAX_LEN),
            stream_max_age_seconds=env.number(environ, "EVENT_STREAM_MAX_AGE_SECONDS", DEFAULT_STREAM_MAX_AGE_SECONDS),
            relay_sweep_seconds=env.number(environ, "RELAY_SWEEP_SECONDS", DEFAULT_RELAY_SWEEP_SECONDS),
            migration_database_url=env.text(environ, "MIGRATION_DATABASE_URL", "") or None,
        )
