"""Settings from an environment mapping: defaults, required values, refusals."""

from __future__ import annotations

from dataclasses import replace

import pytest

from booking_service import settings as booking_settings
from booking_service.database import DatabaseConfig
from booking_service.relay import RelayConfig
from booking_service.settings import Settings as BookingSettings
from notify_service import settings as notify_settings
from notify_service.hub import BatchLimits
from notify_service.settings import Settings as NotifySettings
from svc_common.logs import LogConfig
from svc_common.redis_client import RedisConfig, SentinelTarget
from svc_common.settings import Env, SettingsError, redact_url

SECRET = "s" * 32
BASE = {"DATABASE_URL": "postgresql://u@h/db", "REDIS_URL": "redis://h", "JWT_SECRET": SECRET}


def test_defaults_apply_when_unset() -> None:
    settings = BookingSettings.from_env(BASE)
    assert settings.database.max_connections == 10 and settings.grace_seconds == 10.0
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
        database=DatabaseConfig("postgresql://u@h/db", min_connections=3, max_connections=7, attempts=5),
        redis=RedisConfig("redis://h"),
        relay=RelayConfig(stream_key="k", max_len=99, max_age_seconds=77.5, sweep_seconds=0.5),
        jwt_secret=SECRET,
        server=replace(BookingSettings.server, listen="0.0.0.0:1"),
        grace_seconds=1.5,
        health_interval_seconds=0.25,
        retention_days=30.0,
        retention_interval_seconds=60.0,
        migration_database_url="postgresql://owner@h/db",
    )
    notify = {
        **BASE,
        "EVENT_STREAM_KEY": "k",
        "SUBSCRIBER_QUEUE_SIZE": "1",
        "SHUTDOWN_GRACE_SECONDS": "2.5",
        "SUBSCRIBE_START_WAIT_SECONDS": "3",
        "REDIS_FALLBACK_AFTER_SECONDS": "0.5",
        "MAX_CONNECTION_AGE_SECONDS": "60",
        "MAX_CONNECTION_AGE_GRACE_SECONDS": "5",
        "EVENT_LOOP": "asyncio",
    }
    assert NotifySettings.from_env(notify, listen="0.0.0.0:2") == NotifySettings(
        redis=RedisConfig("redis://h"),
        jwt_secret=SECRET,
        server=replace(
            NotifySettings.server,
            listen="0.0.0.0:2",
            max_connection_age_seconds=60,
            max_connection_age_grace_seconds=5,
            event_loop="asyncio",
        ),
        stream_key="k",
        max_queue=1,
        grace_seconds=2.5,
        start_wait_seconds=3,
        database_url="postgresql://u@h/db",
        fallback_after_seconds=0.5,
    )


def test_notify_falls_back_only_with_a_database_and_after_a_positive_delay() -> None:
    without = {k: v for k, v in BASE.items() if k != "DATABASE_URL"}
    assert NotifySettings.from_env(without).database_url == ""
    assert NotifySettings.from_env(BASE).fallback_after_seconds == 2.0
    for value in ("0", "-1", "3601"):
        with pytest.raises(SettingsError, match="REDIS_FALLBACK_AFTER_SECONDS must be more than 0 and at most 3600"):
            NotifySettings.from_env({**BASE, "REDIS_FALLBACK_AFTER_SECONDS": value})


def test_every_default_when_nothing_but_the_required_is_set() -> None:
    assert BookingSettings.from_env(BASE) == BookingSettings(
        database=DatabaseConfig("postgresql://u@h/db"),
        redis=RedisConfig("redis://h"),
        relay=RelayConfig(),
        jwt_secret=SECRET,
    )
    assert BookingSettings.from_env({**BASE, "DB_ATTEMPTS": "  "}).database.attempts == DatabaseConfig.attempts
    assert NotifySettings.from_env(BASE) == NotifySettings(
        redis=RedisConfig("redis://h"), jwt_secret=SECRET, database_url="postgresql://u@h/db"
    )
    assert (BookingSettings.server.listen, NotifySettings.server.listen) == ("127.0.0.1:50051", "127.0.0.1:50052")
    assert (RelayConfig.stream_key, NotifySettings.stream_key) == ("booking:events", "booking:events")
    assert BookingSettings.server.event_loop == NotifySettings.server.event_loop == "uvloop"


@pytest.mark.parametrize("missing", ["DATABASE_URL", "REDIS_URL", "JWT_SECRET"])
def test_each_required_variable_is_named_when_missing(missing: str) -> None:
    with pytest.raises(SettingsError, match=f"environment variable {missing} is required"):
        BookingSettings.from_env({k: v for k, v in BASE.items() if k != missing})


def test_the_queue_size_refusal_says_what_is_allowed() -> None:
    with pytest.raises(SettingsError) as raised:
        NotifySettings.from_env({**BASE, "SUBSCRIBER_QUEUE_SIZE": "-5"})
    assert str(raised.value) == "SUBSCRIBER_QUEUE_SIZE must be from 1 to 1000000, got -5"


def test_batch_limits_are_read_and_must_be_positive() -> None:
    settings = NotifySettings.from_env({**BASE, "SUBSCRIBE_MAX_BATCH_EVENTS": "8", "SUBSCRIBE_MAX_BATCH_BYTES": "999"})
    assert (settings.subscriptions.limits.max_events, settings.subscriptions.limits.max_bytes) == (8, 999)
    assert NotifySettings.from_env(BASE).subscriptions.limits == BatchLimits(256, 256 * 1024)
    for name in ("SUBSCRIBE_MAX_BATCH_EVENTS", "SUBSCRIBE_MAX_BATCH_BYTES"):
        with pytest.raises(SettingsError, match=f"{name} must be from 1 to"):
            NotifySettings.from_env({**BASE, name: "0"})


def test_workers_bind_with_reuse_port_and_a_lone_process_does_not() -> None:
    assert not BookingSettings.from_env(BASE).server.reuse_port and not NotifySettings.from_env(BASE).server.reuse_port
    assert BookingSettings.from_env(BASE, reuse_port=True).server.reuse_port
    assert NotifySettings.from_env(BASE, reuse_port=True).server.reuse_port


def test_a_batch_no_client_could_receive_is_refused() -> None:
    assert NotifySettings.from_env({**BASE, "SUBSCRIBE_MAX_BATCH_BYTES": str(4 * 1024 * 1024)}).max_batch_bytes
    with pytest.raises(SettingsError, match="SUBSCRIBE_MAX_BATCH_BYTES must be from 1 to 4194304"):
        NotifySettings.from_env({**BASE, "SUBSCRIBE_MAX_BATCH_BYTES": str(4 * 1024 * 1024 + 1)})


def test_the_history_window_may_be_zero_and_is_bounded() -> None:
    assert NotifySettings.from_env(BASE).history_window == 10_000
    assert NotifySettings.from_env({**BASE, "SUBSCRIBE_HISTORY_WINDOW": "0"}).history_window == 0
    assert NotifySettings.from_env({**BASE, "SUBSCRIBE_HISTORY_WINDOW": "1000000"}).history_window == 1_000_000
    for value in ("-1", "1000001"):
        with pytest.raises(SettingsError, match=f"SUBSCRIBE_HISTORY_WINDOW must be from 0 to 1000000, got {value}"):
            NotifySettings.from_env({**BASE, "SUBSCRIBE_HISTORY_WINDOW": value})


def metrics_listen(environ: dict[str, str], default: str = "") -> tuple[str, int] | None:
    env = Env(environ)
    address = env.address("METRICS_LISTEN", default)
    env.check()
    return address


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
    assert BookingSettings.from_env(without).server.metrics and NotifySettings.from_env(without).server.metrics
    assert not BookingSettings.from_env({**without, "METRICS_LISTEN": ""}).server.metrics
    assert (booking_settings.DEFAULT_METRICS_LISTEN, notify_settings.DEFAULT_METRICS_LISTEN) == (
        "127.0.0.1:9091",
        "127.0.0.1:9092",
    )
    with pytest.raises(SettingsError, match="METRICS_LISTEN must be HOST:PORT"):
        NotifySettings.from_env({**without, "METRICS_LISTEN": "nowhere"})


def test_notify_values_out_of_bounds_are_refused_all_at_once_each_named() -> None:
    bad = {
        **BASE,
        "SUBSCRIBER_QUEUE_SIZE": "0",
        "SHUTDOWN_GRACE_SECONDS": "0",
        "REDIS_FALLBACK_AFTER_SECONDS": "x",
        "SUBSCRIBE_HISTORY_WINDOW": "2000000",
        "MAX_CONNECTION_AGE_SECONDS": "-1",
        "REDIS_URL": "http://h",
        "JWT_SECRET": "",
    }
    with pytest.raises(SettingsError) as refused:
        NotifySettings.from_env(bad)
    assert refused.value.problems == [
        "REDIS_FALLBACK_AFTER_SECONDS must be a number, got 'x'",
        "REDIS_URL must be a URL starting with redis:// or rediss:// or unix:// or redis+sentinel://",
        "environment variable JWT_SECRET is required",
        "MAX_CONNECTION_AGE_SECONDS must be from 0 to 604800, got -1",
        "SUBSCRIBER_QUEUE_SIZE must be from 1 to 1000000, got 0",
        "SHUTDOWN_GRACE_SECONDS must be more than 0 and at most 3600, got 0",
        "SUBSCRIBE_HISTORY_WINDOW must be from 0 to 1000000, got 2000000",
    ]


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("DATABASE_URL", "mysql://h/db", "DATABASE_URL must be a URL starting with postgresql:// or postgres://"),
        ("DATABASE_URL", "postgresql://h:port/db", "DATABASE_URL: port 'port' of h is not a number from 1 to 65535"),
        ("DATABASE_URL", "postgresql://h1:5432,h2:65536/db", "DATABASE_URL: port '65536' of h2 is not a number"),
        ("DATABASE_URL", "postgresql://h/db?target_session_attrs=rw", "DATABASE_URL: target_session_attrs must be"),
        ("DATABASE_CONNECT_TIMEOUT_SECONDS", "0", "DATABASE_CONNECT_TIMEOUT_SECONDS must be more than 0"),
        ("MIGRATION_DATABASE_URL", "owner@h/db", "MIGRATION_DATABASE_URL must be a URL"),
        ("REDIS_URL", "localhost:6379", "REDIS_URL must be a URL starting with redis://"),
        ("SHUTDOWN_GRACE_SECONDS", "inf", "SHUTDOWN_GRACE_SECONDS must be a finite number, got 'inf'"),
        ("HEALTH_INTERVAL_SECONDS", "nan", "HEALTH_INTERVAL_SECONDS must be a finite number"),
        ("LOG_LEVEL", "loud", "LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, got 'LOUD'"),
        ("MAX_CONNECTION_AGE_GRACE_SECONDS", "-2", "MAX_CONNECTION_AGE_GRACE_SECONDS must be from 0 to 86400"),
        ("DB_MAX_CONNECTIONS", "0", "DB_MAX_CONNECTIONS must be from 1 to 1000, got 0"),
        ("RETENTION_DAYS", "-1", "RETENTION_DAYS must be from 0 to 36500, got -1"),
        ("EVENT_STREAM_MAX_LEN", "99999999999999999999", "EVENT_STREAM_MAX_LEN must be from 1 to 1000000000"),
        ("EVENT_STREAM_MAX_AGE_SECONDS", "1e300", "EVENT_STREAM_MAX_AGE_SECONDS must be more than 0 and at most"),
        ("TLS_CLIENT_CA_FILE", "/etc/hostname", "TLS_CLIENT_CA_FILE needs TLS_CERT_FILE and TLS_KEY_FILE"),
        ("TLS_CERT_FILE", "/nonexistent.pem", "TLS_CERT_FILE: cannot read /nonexistent.pem"),
    ],
)
def test_each_bad_booking_value_gets_its_own_message(name: str, value: str, message: str) -> None:
    env = Env({**BASE, name: value})
    LogConfig.read(env)
    BookingSettings.read(env, listen="127.0.0.1:1", reuse_port=False)
    with pytest.raises(SettingsError) as refused:
        env.check()
    assert any(problem.startswith(message) for problem in refused.value.problems), refused.value.problems


def test_the_report_shows_every_setting_read_with_secrets_and_url_passwords_redacted() -> None:
    env = Env({**BASE, "DATABASE_URL": "postgresql://app:hunter2@db:5432/booking", "DB_ATTEMPTS": "4"})
    BookingSettings.read(env, listen="127.0.0.1:1", reuse_port=False)
    env.check()
    report = env.report()
    assert SECRET not in report and "hunter2" not in report
    lines = report.splitlines()
    assert "JWT_SECRET=<redacted>" in lines
    assert "DATABASE_URL=postgresql://app:<redacted>@db:5432/booking" in lines
    assert "DB_ATTEMPTS=4" in lines and "DB_MAX_CONNECTIONS=10  # default" in lines
    assert "MIGRATION_DATABASE_URL=unset  # default" in lines


def test_redact_url_keeps_everything_but_the_password() -> None:
    assert redact_url("redis://:pw@h:6379/0") == "redis://:<redacted>@h:6379/0"
    assert redact_url("postgresql://u@h/db") == "postgresql://u@h/db"


@pytest.mark.parametrize(
    ("url", "target"),
    [
        (
            "redis+sentinel://s1:26379,s2:26380/mymaster",
            SentinelTarget((("s1", 26379), ("s2", 26380)), "mymaster"),
        ),
        (
            "redis+sentinel://app:p%40ss@[::1]:26379/events/2",
            SentinelTarget((("::1", 26379),), "events", 2, "app", "p@ss"),
        ),
        ("redis+sentinel://:pw@s1:26379/m", SentinelTarget((("s1", 26379),), "m", 0, None, "pw")),
        ("redis+sentinel://s1:65535,s2:1/m", SentinelTarget((("s1", 65535), ("s2", 1)), "m")),  # the port's bounds
    ],
)
def test_a_sentinel_url_names_its_sentinels_service_database_and_credentials(url: str, target: SentinelTarget) -> None:
    assert SentinelTarget.parse(url) == target
    assert BookingSettings.from_env({**BASE, "REDIS_URL": url}).redis.url == url


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+sentinel://s1:26379", "names no service"),
        ("redis+sentinel://s1/mymaster", "each sentinel must be host:port, got 's1'"),
        ("redis+sentinel://s1:26379,:1/m", "each sentinel must be host:port, got ':1'"),
        ("redis+sentinel://s1:99999/m", "each sentinel must be host:port"),
        ("redis+sentinel://s1:65536/m", "each sentinel must be host:port, got 's1:65536'"),
        ("redis+sentinel://s1:0/m", "each sentinel must be host:port, got 's1:0'"),
        ("redis+sentinel://s1:26379/m/x", "the database must be a number, got 'x'"),
    ],
)
def test_a_bad_sentinel_url_is_refused_saying_what_is_wrong(url: str, problem: str) -> None:
    for settings in (BookingSettings, NotifySettings):
        with pytest.raises(SettingsError) as refused:
            settings.from_env({**BASE, "REDIS_URL": url})
        (message,) = refused.value.problems
        assert message.startswith("REDIS_URL: ") and problem in message and "redis+sentinel://" in message


def test_the_redis_timeout_is_bounded_under_notifys_fallback_delay_and_passwords_are_redacted() -> None:
    assert NotifySettings.from_env(BASE).redis.timeout_seconds == 0.5
    with pytest.raises(SettingsError, match=r"REDIS_TIMEOUT_SECONDS must be more than 0 and at most 1, got 1\.5"):
        NotifySettings.from_env({**BASE, "REDIS_TIMEOUT_SECONDS": "1.5"})
    with pytest.raises(SettingsError, match="REDIS_TIMEOUT_SECONDS must be more than 0"):
        BookingSettings.from_env({**BASE, "REDIS_TIMEOUT_SECONDS": "0"})
    env = Env({**BASE, "REDIS_URL": "redis+sentinel://:data-pw@s1:1,s2:2/m", "REDIS_SENTINEL_PASSWORD": "s-pw"})
    NotifySettings.read(env, listen="127.0.0.1:0", reuse_port=False)
    report = env.report()
    assert "data-pw" not in report and "s-pw" not in report
    assert "REDIS_URL=redis+sentinel://:<redacted>@s1:1,s2:2/m" in report.splitlines()
    assert "REDIS_SENTINEL_PASSWORD=<redacted>" in report.splitlines()


def test_a_misspelled_setting_is_named_whatever_its_prefix() -> None:
    """DATABSE_URL for a required DATABASE_URL: the missing one's problem names the misspelling; WORKER, set
    beside the settings, is warned of as WORKERS; a name far from every setting (PATH) is nobody's business."""
    env = Env({"DATABSE_URL": "postgresql://u@h/db", "REDIS_URL": "redis://h", "JWT_SECRET": SECRET})
    BookingSettings.read(env, listen="127.0.0.1:1", reuse_port=False)
    assert "environment variable DATABASE_URL is required (DATABSE_URL is set: a misspelling?)" in env.problems
    env = Env({**BASE, "WORKER": "1", "PATH": "/usr/bin", "REDIS_URI": "redis://h"})
    BookingSettings.read(env, listen="127.0.0.1:1", reuse_port=False)
    env.integer("WORKERS", 1)  # read by the command line beside the service's settings
    assert env.unknown() == [
        "REDIS_URI is set but not read: did you mean REDIS_URL?",
        "WORKER is set but not read: did you mean WORKERS?",
    ]
