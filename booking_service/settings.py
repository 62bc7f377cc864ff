"""The booking service's settings, read once from the environment (tests pass their own mapping)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from booking_service.database import DatabaseConfig
from booking_service.relay import RelayConfig
from svc_common import settings as env
from svc_common.auth import MIN_SECRET_BYTES
from svc_common.eventstream import DEFAULT_STREAM_KEY
from svc_common.metrics import metrics_listen
from svc_common.tls import TlsConfig, tls_from_env

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_METRICS_LISTEN = "127.0.0.1:9091"  # METRICS_LISTEN when unset ("" turns metrics off)


@dataclass(frozen=True)
class Settings:
    """Every default is the component's own (DatabaseConfig, RelayConfig) or stated here once; from_env reads
    the field defaults back (`cls.<field>`), so no default is written twice."""

    database_url: str
    redis_url: str
    jwt_secret: str
    listen: str = DEFAULT_LISTEN
    reuse_port: bool = False  # one of several workers on one address (SO_REUSEPORT; set by --workers)
    metrics: bool = True  # record metrics: METRICS_LISTEN is not empty (svc_common.metrics serves them)
    tls: TlsConfig | None = None  # None: plaintext (svc_common.tls)
    db_min_connections: int = DatabaseConfig.min_connections
    db_max_connections: int = DatabaseConfig.max_connections
    db_attempts: int = DatabaseConfig.attempts
    grace_seconds: float = 10.0
    health_interval_seconds: float = 2.0
    retention_days: float = 0.0  # 0: no automatic purge
    retention_interval_seconds: float = 3600.0
    stream_key: str = DEFAULT_STREAM_KEY
    stream_max_len: int = RelayConfig.max_len  # change events kept in Redis, by count ...
    stream_max_age_seconds: float = RelayConfig.max_age_seconds  # ... and by age
    relay_sweep_seconds: float = RelayConfig.sweep_seconds
    migration_database_url: str | None = None  # the owner role's URL; None: DATABASE_URL's role migrates

    def problems(self) -> list[str]:
        """What is wrong with these values (each bound named), all at once."""
        checks = [
            (self.db_max_connections >= 1, "DB_MAX_CONNECTIONS must be at least 1"),
            (
                0 <= self.db_min_connections <= self.db_max_connections,
                f"DB_MIN_CONNECTIONS must be from 0 to DB_MAX_CONNECTIONS ({self.db_max_connections})",
            ),
            (1 <= self.db_attempts <= 100, "DB_ATTEMPTS must be from 1 to 100"),
            (self.grace_seconds > 0, "SHUTDOWN_GRACE_SECONDS must be more than 0"),
            (self.health_interval_seconds >= 0.05, "HEALTH_INTERVAL_SECONDS must be at least 0.05"),
            (self.retention_days >= 0, "RETENTION_DAYS must be at least 0 (0: no retention purge)"),
            (self.retention_interval_seconds >= 0.1, "RETENTION_INTERVAL_SECONDS must be at least 0.1"),
            (self.stream_max_len >= 1, "EVENT_STREAM_MAX_LEN must be at least 1"),
            (self.stream_max_age_seconds > 0, "EVENT_STREAM_MAX_AGE_SECONDS must be more than 0"),
            (self.relay_sweep_seconds >= 0.01, "RELAY_SWEEP_SECONDS must be at least 0.01"),
        ]
        return [message for ok, message in checks if not ok]

    @classmethod
    def from_env(cls, environ: Mapping[str, str], *, listen: str | None = None, reuse_port: bool = False) -> Settings:
        settings = cls._read(environ, listen=listen, reuse_port=reuse_port)
        if problems := settings.problems():
            raise env.SettingsError("; ".join(problems))
        return settings

    @classmethod
    def _read(cls, environ: Mapping[str, str], *, listen: str | None, reuse_port: bool) -> Settings:
        return cls(
            database_url=env.require(environ, "DATABASE_URL"),
            redis_url=env.require(environ, "REDIS_URL"),
            jwt_secret=env.secret(environ, "JWT_SECRET", min_bytes=MIN_SECRET_BYTES),
            listen=listen or DEFAULT_LISTEN,
            reuse_port=reuse_port,
            metrics=metrics_listen(environ, DEFAULT_METRICS_LISTEN) is not None,
            tls=tls_from_env(environ),
            db_min_connections=env.integer(environ, "DB_MIN_CONNECTIONS", cls.db_min_connections),
            db_max_connections=env.integer(environ, "DB_MAX_CONNECTIONS", cls.db_max_connections),
            db_attempts=env.integer(environ, "DB_ATTEMPTS", cls.db_attempts),
            grace_seconds=env.number(environ, "SHUTDOWN_GRACE_SECONDS", cls.grace_seconds),
            health_interval_seconds=env.number(environ, "HEALTH_INTERVAL_SECONDS", cls.health_interval_seconds),
            retention_days=env.number(environ, "RETENTION_DAYS", cls.retention_days),
            retention_interval_seconds=env.number(
                environ, "RETENTION_INTERVAL_SECONDS", cls.retention_interval_seconds
            ),
            stream_key=env.text(environ, "EVENT_STREAM_KEY", cls.stream_key),
            stream_max_len=env.integer(environ, "EVENT_STREAM_MAX_LEN", cls.stream_max_len),
            stream_max_age_seconds=env.number(environ, "EVENT_STREAM_MAX_AGE_SECONDS", cls.stream_max_age_seconds),
            relay_sweep_seconds=env.number(environ, "RELAY_SWEEP_SECONDS", cls.relay_sweep_seconds),
            migration_database_url=env.text(environ, "MIGRATION_DATABASE_URL", "") or None,
        )
