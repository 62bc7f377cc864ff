"""Settings from an environment mapping: defaults, required values, refusals."""

from __future__ import annotations

import pytest

from booking_service.settings import Settings as BookingSettings
from notify_service.settings import Settings as NotifySettings
from svc_common.settings import SettingsError

SECRET = "s" * 32
BASE = {"DATABASE_URL": "postgresql://u@h/db", "REDIS_URL": "redis://h", "JWT_SECRET": SECRET}


def test_defaults_apply_when_unset() -> None:
    settings = BookingSettings.from_env(BASE)
    assert settings.db_max_connections == 10 and settings.grace_seconds == 10.0
    assert settings.migration_database_url is None
    assert NotifySettings.from_env(BASE).max_queue == 1000


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"DATABASE_URL": ""}, "DATABASE_URL"),
        ({"JWT_SECRET": "short"}, "at least 32 bytes"),
        ({"DB_ATTEMPTS": "three"}, "DB_ATTEMPTS must be an integer"),
        ({"SHUTDOWN_GRACE_SECONDS": "soon"}, "must be a number"),
    ],
)
def test_bad_values_are_refused_by_name(change: dict[str, str], words: str) -> None:
    with pytest.raises(SettingsError, match=words):
        BookingSettings.from_env({**BASE, **change})


def test_a_subscriber_queue_below_one_is_refused() -> None:
    with pytest.raises(SettingsError, match="SUBSCRIBER_QUEUE_SIZE"):
        NotifySettings.from_env({**BASE, "SUBSCRIBER_QUEUE_SIZE": "0"})
