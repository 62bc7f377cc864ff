"""The notify service's settings, read once from the environment (tests pass their own mapping)."""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

from notify_service.hub import DEFAULT_WINDOW, BatchLimits
from notify_service.limits import StreamBounds
from notify_service.subscriptions import SubscriptionConfig
from svc_common import postgres, probes
from svc_common.auth import MIN_SECRET_BYTES
from svc_common.eventstream import DEFAULT_STREAM_KEY
from svc_common.grpc_server import ServerConfig
from svc_common.postgres import database_connect_timeout
from svc_common.redis_client import RedisConfig
from svc_common.settings import Env, read_checked

SERVICE = "notify_service"  # the process's name, and its spans' service.name
DEFAULT_LISTEN = "127.0.0.1:50052"
DEFAULT_METRICS_LISTEN = "127.0.0.1:9092"  # METRICS_LISTEN when unset ("" turns metrics off)
# What the server is configured with when nothing is set (read from an empty environment: no default twice).
DEFAULT_SERVER = ServerConfig.read(
    Env({}), listen=DEFAULT_LISTEN, reuse_port=False, metrics_default=DEFAULT_METRICS_LISTEN, service_name=SERVICE
)


@dataclass(frozen=True)
class Settings:
    redis: RedisConfig  # REDIS_URL, REDIS_TIMEOUT_SECONDS, REDIS_SENTINEL_PASSWORD
    jwt_secret: str
    server: ServerConfig = DEFAULT_SERVER
    stream_key: str = DEFAULT_STREAM_KEY
    max_queue: int = SubscriptionConfig.max_queue  # events a subscriber may fall behind before it is ended
    grace_seconds: float = 5.0
    start_wait_seconds: float = SubscriptionConfig.start_wait_seconds  # a Subscribe before the first stream read
    max_batch_events: int = BatchLimits.max_events  # what one Subscribe response may carry
    max_batch_bytes: int = BatchLimits.max_bytes
    history_window: int = DEFAULT_WINDOW  # recent events kept in memory for resuming subscribers
    database_url: str = ""  # booking_service's database, read while Redis cannot be ("": no fallback)
    database_connect_timeout: float = postgres.DEFAULT_CONNECT_TIMEOUT_SECONDS  # per host
    fallback_after_seconds: float = 2.0  # how long Redis may be unreadable before the outbox is followed
    stream_bounds: StreamBounds = field(
        default_factory=StreamBounds
    )  # Subscribe streams per caller and in all (0: no bound)

    def probes(self) -> dict[str, Callable[[], Coroutine[Any, Any, str]]]:
        """What --check-config --probe connects to."""
        checks = {"Redis (REDIS_URL)": lambda: probes.redis(self.redis)}
        if self.database_url:
            checks["PostgreSQL (DATABASE_URL, the fallback)"] = lambda: probes.postgres(self.database_url)
        return checks

    @property
    def subscriptions(self) -> SubscriptionConfig:
        return SubscriptionConfig(
            self.max_queue, BatchLimits(self.max_batch_events, self.max_batch_bytes), self.start_wait_seconds
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str], *, listen: str | None = None, reuse_port: bool = False) -> Settings:
        """The settings, or SettingsError naming every problem."""
        return read_checked(cls.read, environ, listen=listen or DEFAULT_LISTEN, reuse_port=reuse_port)

    @classmethod
    def read(cls, env: Env, *, listen: str, reuse_port: bool) -> Settings:
        """Read every setting; what is wrong is recorded in `env` (each bound named), for `env.check()`."""
        fallback_after = env.number("REDIS_FALLBACK_AFTER_SECONDS", cls.fallback_after_seconds, above=0, most=3600)
        return cls(
            # Each Redis call is bounded well under the fallback delay (at most half of it).
            redis=RedisConfig.read(env, most_timeout=min(10.0, fallback_after / 2)),
            jwt_secret=env.secret("JWT_SECRET", min_bytes=MIN_SECRET_BYTES),
            server=ServerConfig.read(
                env,
                listen=listen,
                reuse_port=reuse_port,
                metrics_default=DEFAULT_METRICS_LISTEN,
                service_name=SERVICE,
            ),
            database_url=postgres.read_url(env, "DATABASE_URL"),
            database_connect_timeout=database_connect_timeout(env),
            fallback_after_seconds=fallback_after,
            stream_key=env.text("EVENT_STREAM_KEY", cls.stream_key),
            max_queue=env.integer("SUBSCRIBER_QUEUE_SIZE", cls.max_queue, least=1, most=1_000_000),
            grace_seconds=env.number("SHUTDOWN_GRACE_SECONDS", cls.grace_seconds, above=0, most=3600),
            start_wait_seconds=env.number("SUBSCRIBE_START_WAIT_SECONDS", cls.start_wait_seconds, above=0, most=3600),
            max_batch_events=env.integer("SUBSCRIBE_MAX_BATCH_EVENTS", cls.max_batch_events, least=1, most=100_000),
            # grpc clients refuse messages over 4 MiB unless told otherwise.
            max_batch_bytes=env.integer(
                "SUBSCRIBE_MAX_BATCH_BYTES", cls.max_batch_bytes, least=1, most=4 * 1024 * 1024
            ),
            # 1,000,000 events of a few hundred bytes: a few hundred MB, as much as anyone should keep.
            history_window=env.integer("SUBSCRIBE_HISTORY_WINDOW", cls.history_window, least=0, most=1_000_000),
            stream_bounds=StreamBounds(
                per_caller=env.integer(
                    "SUBSCRIBE_MAX_STREAMS_PER_CALLER", StreamBounds.per_caller, least=0, most=10_000_000
                ),
                per_admin=env.integer(
                    "SUBSCRIBE_MAX_STREAMS_PER_ADMIN", StreamBounds.per_admin, least=0, most=10_000_000
                ),
                total=env.integer("SUBSCRIBE_MAX_STREAMS", StreamBounds.total, least=0, most=10_000_000),
            ),
        )
