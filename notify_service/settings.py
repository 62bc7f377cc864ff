"""The notify service's settings, read once from the environment (tests pass their own mapping)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from notify_service.hub import DEFAULT_WINDOW, BatchLimits
from notify_service.subscriptions import SubscriptionConfig
from svc_common import settings as env
from svc_common.auth import MIN_SECRET_BYTES
from svc_common.eventstream import DEFAULT_STREAM_KEY
from svc_common.metrics import metrics_listen
from svc_common.tls import TlsConfig, tls_from_env

DEFAULT_LISTEN = "127.0.0.1:50052"
DEFAULT_METRICS_LISTEN = "127.0.0.1:9092"  # METRICS_LISTEN when unset ("" turns metrics off)


@dataclass(frozen=True)
class Settings:
    redis_url: str
    jwt_secret: str
    listen: str = DEFAULT_LISTEN
    reuse_port: bool = False  # one of several workers on one address (SO_REUSEPORT; set by --workers)
    metrics: bool = True  # record metrics: METRICS_LISTEN is not empty (svc_common.metrics serves them)
    tls: TlsConfig | None = None  # None: plaintext (svc_common.tls)
    stream_key: str = DEFAULT_STREAM_KEY
    max_queue: int = SubscriptionConfig.max_queue  # events a subscriber may fall behind before it is ended
    grace_seconds: float = 5.0
    max_batch_events: int = BatchLimits.max_events  # what one Subscribe response may carry
    max_batch_bytes: int = BatchLimits.max_bytes
    history_window: int = DEFAULT_WINDOW  # recent events kept in memory for resuming subscribers
    database_url: str = ""  # booking_service's database, read while Redis cannot be ("": no fallback)
    fallback_after_seconds: float = 2.0  # how long Redis may be unreadable before the outbox is followed

    @property
    def subscriptions(self) -> SubscriptionConfig:
        return SubscriptionConfig(self.max_queue, BatchLimits(self.max_batch_events, self.max_batch_bytes))

    @classmethod
    def from_env(cls, environ: Mapping[str, str], *, listen: str | None = None, reuse_port: bool = False) -> Settings:
        def bounded(name: str, default: int, at_most: int | None = None, least: int = 1) -> int:
            value = env.integer(environ, name, default)
            if value < least:
                raise env.SettingsError(f"{name} must be at least {least}")
            if at_most is not None and value > at_most:
                raise env.SettingsError(f"{name} must be at most {at_most}")
            return value

        grace = env.number(environ, "SHUTDOWN_GRACE_SECONDS", cls.grace_seconds)
        if not grace > 0:
            raise env.SettingsError("SHUTDOWN_GRACE_SECONDS must be more than 0")
        fallback_after = env.number(environ, "REDIS_FALLBACK_AFTER_SECONDS", cls.fallback_after_seconds)
        if not 0 < fallback_after <= 3600:
            raise env.SettingsError("REDIS_FALLBACK_AFTER_SECONDS must be more than 0 and at most 3600")
        return cls(
            redis_url=env.require(environ, "REDIS_URL"),
            database_url=env.text(environ, "DATABASE_URL", ""),
            fallback_after_seconds=fallback_after,
            jwt_secret=env.secret(environ, "JWT_SECRET", min_bytes=MIN_SECRET_BYTES),
            listen=listen or DEFAULT_LISTEN,
            reuse_port=reuse_port,
            metrics=metrics_listen(environ, DEFAULT_METRICS_LISTEN) is not None,
            tls=tls_from_env(environ),
            stream_key=env.text(environ, "EVENT_STREAM_KEY", cls.stream_key),
            max_queue=bounded("SUBSCRIBER_QUEUE_SIZE", cls.max_queue),
            grace_seconds=grace,
            max_batch_events=bounded("SUBSCRIBE_MAX_BATCH_EVENTS", cls.max_batch_events),
            # grpc clients refuse messages over 4 MiB unless told otherwise.
            max_batch_bytes=bounded("SUBSCRIBE_MAX_BATCH_BYTES", cls.max_batch_bytes, at_most=4 * 1024 * 1024),
            # 1,000,000 events of a few hundred bytes: a few hundred MB, as much as anyone should keep.
            history_window=bounded("SUBSCRIBE_HISTORY_WINDOW", cls.history_window, at_most=1_000_000, least=0),
        )
