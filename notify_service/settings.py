"""The notify service's settings, read once from the environment (tests pass their own mapping)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

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
    stream_key: str = DEFAULT_STREAM_KEY
    max_queue: int = SubscriptionConfig.max_queue  # events a subscriber may fall behind before it is ended
    grace_seconds: float = 5.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str], *, listen: str | None = None) -> Settings:
        max_queue = env.integer(environ, "SUBSCRIBER_QUEUE_SIZE", cls.max_queue)
        if max_queue < 1:
            raise env.SettingsError("SUBSCRIBER_QUEUE_SIZE must be at least 1")
        return cls(
            redis_url=env.require(environ, "REDIS_URL"),
            jwt_secret=env.secret(environ, "JWT_SECRET", min_bytes=MIN_SECRET_BYTES),
            listen=listen or DEFAULT_LISTEN,
            stream_key=env.text(environ, "EVENT_STREAM_KEY", cls.stream_key),
            max_queue=max_queue,
            grace_seconds=env.number(environ, "SHUTDOWN_GRACE_SECONDS", cls.grace_seconds),
        )
