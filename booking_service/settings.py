"""The booking service's settings, read once from the environment (tests pass their own mapping)."""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from booking_service.database import DatabaseConfig
from booking_service.relay import RelayConfig
from booking_service.usecases import HoldLimits
from svc_common import postgres, probes
from svc_common.auth import MIN_SECRET_BYTES
from svc_common.grpc_server import ServerConfig
from svc_common.postgres import database_connect_timeout
from svc_common.redis_client import RedisConfig
from svc_common.settings import Env, read_checked

SERVICE = "booking_service"  # the process's name, and its spans' service.name
DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_METRICS_LISTEN = "127.0.0.1:9091"  # METRICS_LISTEN when unset ("" turns metrics off)
DEFAULT_HOLD_LIMITS = HoldLimits()
# What the server is configured with when nothing is set (read from an empty environment: no default twice).
DEFAULT_SERVER = ServerConfig.read(
    Env({}), listen=DEFAULT_LISTEN, reuse_port=False, metrics_default=DEFAULT_METRICS_LISTEN, service_name=SERVICE
)


@dataclass(frozen=True)
class Settings:
    """The configs the service is made of (each component's defaults are its own), and the few settings of the
    server's wiring; `read` reads the defaults back (`cls.<field>`, `DatabaseConfig.<field>`), so no default is
    written twice."""

    database: DatabaseConfig  # DATABASE_URL, DB_MIN_CONNECTIONS, DB_MAX_CONNECTIONS, DB_ATTEMPTS
    redis: RedisConfig  # REDIS_URL, REDIS_TIMEOUT_SECONDS, REDIS_SENTINEL_PASSWORD
    relay: RelayConfig  # EVENT_STREAM_KEY, EVENT_STREAM_MAX_LEN, EVENT_STREAM_MAX_AGE_SECONDS, RELAY_SWEEP_SECONDS
    jwt_secret: str
    server: ServerConfig = DEFAULT_SERVER
    grace_seconds: float = 10.0
    health_interval_seconds: float = 2.0
    retention_days: float = 0.0  # 0: no automatic purge
    retention_interval_seconds: float = 3600.0
    migration_database_url: str | None = None  # the owner role's URL; None: DATABASE_URL's role migrates
    hold_limits: HoldLimits = DEFAULT_HOLD_LIMITS  # HOLDS_MAX_PER_CUSTOMER, HOLDS_MAX_PER_PROVIDER
    holds_sweep_seconds: float = 0.5  # 0: this process does not sweep expired holds

    @property
    def database_url(self) -> str:
        return self.database.dsn

    def probes(self) -> dict[str, Callable[[], Coroutine[Any, Any, str]]]:
        """What --check-config --probe connects to."""
        checks = {
            "PostgreSQL (DATABASE_URL)": lambda: probes.postgres(self.database_url),
            "Redis (REDIS_URL)": lambda: probes.redis(self.redis),
        }
        if self.migration_database_url:
            checks["PostgreSQL (MIGRATION_DATABASE_URL)"] = lambda: probes.postgres(str(self.migration_database_url))
        return checks

    @classmethod
    def from_env(cls, environ: Mapping[str, str], *, listen: str | None = None, reuse_port: bool = False) -> Settings:
        """The settings, or SettingsError naming every problem."""
        return read_checked(cls.read, environ, listen=listen or DEFAULT_LISTEN, reuse_port=reuse_port)

    @classmethod
    def read(cls, env: Env, *, listen: str, reuse_port: bool) -> Settings:
        """Read every setting; what is wrong is recorded in `env` (each bound named), for `env.check()`."""
        database_url = postgres.read_url(env, "DATABASE_URL", required=True)
        max_connections = env.integer("DB_MAX_CONNECTIONS", DatabaseConfig.max_connections, least=1, most=1000)
        return cls(
            database=DatabaseConfig(
                dsn=database_url,
                connect_timeout=database_connect_timeout(env),
                min_connections=env.integer(
                    "DB_MIN_CONNECTIONS", DatabaseConfig.min_connections, least=0, most=max_connections
                ),
                max_connections=max_connections,
                attempts=env.integer("DB_ATTEMPTS", DatabaseConfig.attempts, least=1, most=100),
            ),
            redis=RedisConfig.read(env),
            relay=RelayConfig(
                stream_key=env.text("EVENT_STREAM_KEY", RelayConfig.stream_key),
                # Redis takes MAXLEN as a 64-bit integer; a billion events is more than any stream should hold.
                max_len=env.integer("EVENT_STREAM_MAX_LEN", RelayConfig.max_len, least=1, most=1_000_000_000),
                max_age_seconds=env.number(
                    "EVENT_STREAM_MAX_AGE_SECONDS", RelayConfig.max_age_seconds, above=0, most=10 * 365 * 86400
                ),
                sweep_seconds=env.number("RELAY_SWEEP_SECONDS", RelayConfig.sweep_seconds, least=0.01, most=3600),
            ),
            jwt_secret=env.secret("JWT_SECRET", min_bytes=MIN_SECRET_BYTES),
            server=ServerConfig.read(
                env,
                listen=listen,
                reuse_port=reuse_port,
                metrics_default=DEFAULT_METRICS_LISTEN,
                service_name=SERVICE,
            ),
            grace_seconds=env.number("SHUTDOWN_GRACE_SECONDS", cls.grace_seconds, above=0, most=3600),
            health_interval_seconds=env.number(
                "HEALTH_INTERVAL_SECONDS", cls.health_interval_seconds, least=0.05, most=3600
            ),
            retention_days=env.number("RETENTION_DAYS", cls.retention_days, least=0, most=36500),
            retention_interval_seconds=env.number(
                "RETENTION_INTERVAL_SECONDS", cls.retention_interval_seconds, least=0.1, most=86400
            ),
            migration_database_url=postgres.read_url(env, "MIGRATION_DATABASE_URL") or None,
            hold_limits=HoldLimits(
                per_customer=env.integer("HOLDS_MAX_PER_CUSTOMER", HoldLimits.per_customer, least=1, most=1_000_000),
                per_provider=env.integer("HOLDS_MAX_PER_PROVIDER", HoldLimits.per_provider, least=1, most=1_000_000),
            ),
            holds_sweep_seconds=env.number("HOLDS_SWEEP_SECONDS", cls.holds_sweep_seconds, least=0, most=3600),
        )
