"""Settings from an environment mapping: defaults, required values, refusals."""

from __future__ import annotations

import pytest

from booking_service import settings as booking_settings
from booking_service.settings import Settings as BookingSettings
from notify_service import settings as notify_settings
from notify_service.hub import BatchLimits
from notify_service.settings import Settings as NotifySettings
from svc_common.metrics import metrics_listen
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


def test_every_variable_is_read_into_its_own_setting() -> None:
    environ = {
        **BASE,
        "DB_MIN_CONNECTIONS": "3",
        "DB_MAX_CONNECTIONS": "7",
        "DB_ATTEMPTS": "5",
        "SHUTDOWN_GRACE_SECONDS": "1.5",
        "HEALTH_INTERVAL_SECONDS": "0.25",
        "RETENTION_DAYS": "30",
        "RETENTION_INTERVAL_SECONDS": "60",
        "EVENT_STREAM_KEY": "k",
        "EVENT_STREAM_MAX_LEN": "99",
        "EVENT_STREAM_MAX_AGE_SECONDS": "77.5",
        "RELAY_SWEEP_SECONDS": "0.5",
        "MIGRATION_DATABASE_URL": " postgresql://owner@h/db ",
    }
    assert BookingSettings.from_env(environ, listen="0.0.0.0:1") == BookingSettings(
        database_url="postgresql://u@h/db",
        redis_url="redis://h",
        jwt_secret=SECRET,
        listen="0.0.0.0:1",
        db_min_connections=3,
        db_max_connections=7,
        db_attempts=5,
        grace_seconds=1.5,
        health_interval_seconds=0.25,
        retention_days=30.0,
        retention_interval_seconds=60.0,
        stream_key="k",
        stream_max_len=99,
        stream_max_age_seconds=77.5,
        relay_sweep_seconds=0.5,
        migration_database_url="postgresql://owner@h/db",
    )
    notify = {
        **BASE,
        "EVENT_STREAM_KEY": "k",
        "SUBSCRIBER_QUEUE_SIZE": "1",
        "SHUTDOWN_GRACE_SECONDS": "2.5",
        "REDIS_FALLBACK_AFTER_SECONDS": "0.5",
    }
    assert NotifySettings.from_env(notify, listen="0.0.0.0:2") == NotifySettings(
        redis_url="redis://h",
        jwt_secret=SECRET,
        listen="0.0.0.0:2",
        stream_key="k",
        max_queue=1,
        grace_seconds=2.5,
        database_url="postgresql://u@h/db",
        fallback_after_seconds=0.5,
    )


def test_notify_falls_back_only_with_a_database_and_after_a_positive_delay() -> None:
    without = {k: v for k, v in BASE.items() if k != "DATABASE_URL"}
    assert NotifySettings.from_env(without).database_url == ""
    assert NotifySettings.from_env(BASE).fallback_after_seconds == 2.0
    for value in ("0", "-1", "3601"):
        with pytest.raises(SettingsError, match="REDIS_FALLBACK_AFTER_SECONDS must be more than 0"):
            NotifySettings.from_env({**BASE, "REDIS_FALLBACK_AFTER_SECONDS": value})


def test_every_default_when_nothing_but_the_required_is_set() -> None:
    assert BookingSettings.from_env(BASE) == BookingSettings(
        database_url="postgresql://u@h/db", redis_url="redis://h", jwt_secret=SECRET
    )
    assert BookingSettings.from_env({**BASE, "DB_ATTEMPTS": "  "}).db_attempts == BookingSettings.db_attempts
    assert NotifySettings.from_env(BASE) == NotifySettings(
        redis_url="redis://h", jwt_secret=SECRET, database_url="postgresql://u@h/db"
    )
    assert (BookingSettings.listen, NotifySettings.listen) == ("127.0.0.1:50051", "127.0.0.1:50052")
    assert (BookingSettings.stream_key, NotifySettings.stream_key) == ("booking:events", "booking:events")


@pytest.mark.parametrize("missing", ["DATABASE_URL", "REDIS_URL", "JWT_SECRET"])
def test_each_required_variable_is_named_when_missing(missing: str) -> None:
    with pytest.raises(SettingsError, match=f"environment variable {missing} is required"):
        BookingSettings.from_env({k: v for k, v in BASE.items() if k != missing})


def test_the_queue_size_refusal_says_what_is_allowed() -> None:
    with pytest.raises(SettingsError) as raised:
        NotifySettings.from_env({**BASE, "SUBSCRIBER_QUEUE_SIZE": "-5"})
    assert str(raised.value) == "SUBSCRIBER_QUEUE_SIZE must be at least 1"


def test_batch_limits_are_read_and_must_be_positive() -> None:
    settings = NotifySettings.from_env({**BASE, "SUBSCRIBE_MAX_BATCH_EVENTS": "8", "SUBSCRIBE_MAX_BATCH_BYTES": "999"})
    assert (settings.subscriptions.limits.max_events, settings.subscriptions.limits.max_bytes) == (8, 999)
    assert NotifySettings.from_env(BASE).subscriptions.limits == BatchLimits(256, 256 * 1024)
    for name in ("SUBSCRIBE_MAX_BATCH_EVENTS", "SUBSCRIBE_MAX_BATCH_BYTES"):
        with pytest.raises(SettingsError, match=f"{name} must be at least 1"):
            NotifySettings.from_env({**BASE, name: "0"})


def test_workers_bind_with_reuse_port_and_a_lone_process_does_not() -> None:
    assert not BookingSettings.from_env(BASE).reuse_port and not NotifySettings.from_env(BASE).reuse_port
    assert BookingSettings.from_env(BASE, reuse_port=True).reuse_port
    assert NotifySettings.from_env(BASE, reuse_port=True).reuse_port


def test_a_batch_no_client_could_receive_is_refused() -> None:
    assert NotifySettings.from_env({**BASE, "SUBSCRIBE_MAX_BATCH_BYTES": str(4 * 1024 * 1024)}).max_batch_bytes
    with pytest.raises(SettingsError, match="SUBSCRIBE_MAX_BATCH_BYTES must be at most 4194304"):
        NotifySettings.from_env({**BASE, "SUBSCRIBE_MAX_BATCH_BYTES": str(4 * 1024 * 1024 + 1)})


def test_the_history_window_may_be_zero_and_is_bounded() -> None:
    assert NotifySettings.from_env(BASE).history_window == 10_000
    assert NotifySettings.from_env({**BASE, "SUBSCRIBE_HISTORY_WINDOW": "0"}).history_window == 0
    assert NotifySettings.from_env({**BASE, "SUBSCRIBE_HISTORY_WINDOW": "1000000"}).history_window == 1_000_000
    for value, message in (("-1", "at least 0"), ("1000001", "at most 1000000")):
        with pytest.raises(SettingsError, match=f"SUBSCRIBE_HISTORY_WINDOW must be {message}"):
            NotifySettings.from_env({**BASE, "SUBSCRIBE_HISTORY_WINDOW": value})


def test_metrics_are_served_where_metrics_listen_says_or_nowhere() -> None:
    assert metrics_listen({}) is None
    assert metrics_listen({"METRICS_LISTEN": "  "}) is None
    assert metrics_listen({"METRICS_LISTEN": "127.0.0.1:9092"}) == ("127.0.0.1", 9092)
    for bad in ("9092", "host", "host:port", "host:99999", ":9092"):
        with pytest.raises(SettingsError, match="METRICS_LISTEN must be HOST:PORT"):
            metrics_listen({"METRICS_LISTEN": bad})


def test_booking_values_out_of_bounds_are_refused_all_at_once() -> None:
    bad = {
        **BASE,
        "DB_ATTEMPTS": "0",
        "HEALTH_INTERVAL_SECONDS": "0",
        "DB_MIN_CONNECTIONS": "20",
        "DB_MAX_CONNECTIONS": "10",
        "RELAY_SWEEP_SECONDS": "0",
    }
    with pytest.raises(SettingsError) as refused:
        BookingSettings.from_env(bad)
    message = str(refused.value)
    for name in ("DB_ATTEMPTS", "HEALTH_INTERVAL_SECONDS", "DB_MIN_CONNECTIONS", "RELAY_SWEEP_SECONDS"):
        assert name in message
    assert "\n" not in message  # one line
    assert BookingSettings.from_env({**BASE, "DB_MIN_CONNECTIONS": "10", "DB_MAX_CONNECTIONS": "10"})


def test_metrics_are_on_by_default_at_9091_and_9092_and_an_empty_metrics_listen_turns_them_off() -> None:
    assert metrics_listen({}, "127.0.0.1:9091") == ("127.0.0.1", 9091)
    assert metrics_listen({"METRICS_LISTEN": ""}, "127.0.0.1:9091") is None
    without = {k: v for k, v in BASE.items() if k != "METRICS_LISTEN"}
    assert BookingSettings.from_env(without).metrics and NotifySettings.from_env(without).metrics
    assert not BookingSettings.from_env({**without, "METRICS_LISTEN": ""}).metrics
    assert (booking_settings.DEFAULT_METRICS_LISTEN, notify_settings.DEFAULT_METRICS_LISTEN) == (
        "127.0.0.1:9091",
        "127.0.0.1:9092",
    )
    with pytest.raises(SettingsError, match="METRICS_LISTEN must be HOST:PORT"):
        NotifySettings.from_env({**without, "METRICS_LISTEN": "nowhere"})
