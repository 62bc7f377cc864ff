"""The notify service's settings, read once from the environment (tests pass their own mapping)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from notify_service.hub import BatchLimits
from notify_service.subscriptions import SubscriptionConfig
from svc_common import settings as env
from svc_common.auth import MIN_SECRET_BYTES
from svc_common.eventstream import DEFAULT_STREAM_KEY

DEFAULT_LISTEN = "127.0.0.1:50052"


@dataclass(frozen=True)
class Settings:
    redis_url: str
    jwt_secret: str
    listen: str = DEFAULT_LISTEN
    reuse_port: bool = False  # one of several workers on one address (SO_REUSEPORT; set by --workers)
    stream_key: str = DEFAULT_STREAM_KEY
    max_queue: int = SubscriptionConfig.max_queue  # events a subscriber may fall behind before it is ended
    grace_seconds: float = 5.0
    max_batch_events: int = BatchLimits.max_events  # what one Subscribe response may carry
    max_batch_bytes: int = BatchLimits.max_bytes

    @property
    def subscriptions(self) -> SubscriptionConfig:
        return SubscriptionConfig(self.max_queue, BatchLimits(self.max_batch_events, self.max_batch_bytes))

    @classmethod
    def from_env(cls, environ: Mapping[str, str], *, listen: str | None = None, reuse_port: bool = False) -> Settings:
        def at_least_one(name: str, default: int, at_most: int | None = None) -> int:
            value = env.integer(environ, name, default)
            if value < 1:
                raise env.SettingsError(f"{name} must be at least 1")
            if at_most is not None and value > at_most:
                raise env.SettingsError(f"{name} must be at most {at_most}")
            return value

        return cls(
            redis_url=env.require(environ, "REDIS_URL"),
            jwt_secret=env.secret(environ, "JWT_SECRET", min_bytes=MIN_SECRET_BYTES),
            listen=listen or DEFAULT_LISTEN,
            reuse_port=reuse_port,
            stream_key=env.text(environ, "EVENT_STREAM_KEY", cls.stream_key),
            max_queue=at_least_one("SUBSCRIBER_QUEUE_SIZE", cls.max_queue),
            grace_seconds=env.number(environ, "SHUTDOWN_GRACE_SECONDS", cls.grace_seconds),
            max_batch_events=at_least_one("SUBSCRIBE_MAX_BATCH_EVENTS", cls.max_batch_events),
            # grpc clients refuse messages over 4 MiB unless told otherwise.
            max_batch_bytes=at_least_one("SUBSCRIBE_MAX_BATCH_BYTES", cls.max_batch_bytes, at_most=4 * 1024 * 1024),
        )
