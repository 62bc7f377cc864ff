"""Starting a service with bad settings, and --check-config, as an operator would: real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from devtools.servers import SERVICE_ROLE, as_role, free_port
from tests.support.helpers import JWT_SECRET
from tests.support.servers import PROJECT, ServiceProcess, refused_start

BASE = {"DATABASE_URL": "postgresql://app:hunter2@127.0.0.1:1/none", "REDIS_URL": "redis://127.0.0.1:1"}


def run(module: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        env={**os.environ, "JWT_SECRET": JWT_SECRET, **BASE, **env},
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("module", ["booking_service", "notify_service"])
def test_every_bad_setting_is_reported_at_once_one_line_each_with_exit_status_2(module: str) -> None:
    bad = {
        "JWT_SECRET": "short",
        "REDIS_URL": "localhost:6379",
        "SHUTDOWN_GRACE_SECONDS": "0",
        "LOG_FORMAT": "xml",
        "WORKERS": "0",
        "METRICS_LISTEN": "nowhere",
        "MAX_CONNECTION_AGE_SECONDS": "soon",
        "EVENT_LOOP": "gevent",
    }
    stderr = refused_start(module, {**BASE, **bad})
    lines = stderr.strip().splitlines()
    assert len(lines) == len(bad), stderr
    assert all(line.startswith(f"{module}: ") for line in lines)
    for name in bad:
        assert sum(name in line for line in lines) == 1, (name, stderr)


@pytest.mark.parametrize("module", ["booking_service", "notify_service"])
def test_check_config_prints_the_effective_settings_with_secrets_redacted_and_exits(module: str) -> None:
    """Nothing is served or connected to (the URLs point at closed ports): the settings are only read."""
    done = run(module, {"DB_ATTEMPTS": "5", "LOG_FORMAT": "json", "WORKERS": "3"}, "--check-config")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"# {module}: the settings are usable"
    assert JWT_SECRET not in done.stdout and "hunter2" not in done.stdout
    assert "JWT_SECRET=<redacted>" in lines
    assert "LOG_FORMAT=json" in lines and "WORKERS=3" in lines
    assert "LOG_LEVEL=INFO  # default" in lines
    assert "--listen=127.0.0.1:5005" + ("1" if module == "booking_service" else "2") in lines
    if module == "booking_service":
        assert "DATABASE_URL=postgresql://app:<redacted>@127.0.0.1:1/none" in lines and "DB_ATTEMPTS=5" in lines


def test_check_config_with_a_bad_value_names_it_and_exits_2() -> None:
    done = run("booking_service", {"DB_MIN_CONNECTIONS": "11"}, "--check-config")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip() == "booking_service: DB_MIN_CONNECTIONS must be from 0 to 10, got 11"


def test_check_config_warns_of_variables_with_the_services_prefixes_that_it_does_not_read() -> None:
    unread = {"DB_POOL_MAX": "0", "LOG_LEVLE": "debug", "OTEL_TRACES_SAMPLER": "always_on", "TLS_CA_FILE": "x"}
    done = run("booking_service", unread, "--check-config")
    assert (
        done.returncode == 0
        and done.stdout.splitlines()[0] == "# booking_service: the settings are usable, with 2 warnings"
    )
    assert done.stderr.splitlines() == [
        "booking_service: warning: DB_POOL_MAX is set but not read: did you mean DB_MAX_CONNECTIONS?",
        "booking_service: warning: LOG_LEVLE is set but not read: did you mean LOG_LEVEL?",
    ]  # OpenTelemetry's own variables, and the health check's TLS ones, are read elsewhere


def test_check_config_probe_connects_to_each_dependency(new_database: Callable[[], str], redis_url: str) -> None:
    down = run("notify_service", {"DATABASE_URL": BASE["DATABASE_URL"]}, "--check-config", "--probe")
    assert down.returncode == 1, down.stdout + down.stderr
    failed = [line for line in down.stdout.splitlines() if "FAILED" in line]
    assert len(failed) == 2 and "Redis (REDIS_URL)" in failed[0] and "PostgreSQL" in failed[1], down.stdout
    up = run("booking_service", {"DATABASE_URL": new_database(), "REDIS_URL": redis_url}, "--check-config", "--probe")
    assert up.returncode == 0, up.stdout + up.stderr
    assert [line.split(": ok (")[0] for line in up.stdout.splitlines() if ": ok (" in line] == [
        "# probe: PostgreSQL (DATABASE_URL)",
        "# probe: Redis (REDIS_URL)",
    ]
    assert "--probe goes with --check-config" in run("booking_service", {}, "--probe").stderr


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_database_that_refuses_what_the_service_needs_stops_it_with_the_reason_after_a_few_tries(
    new_database: Callable[[], str], redis_url: str, workers: str
) -> None:
    """The least-privilege role without MIGRATION_DATABASE_URL may not create the tables: the service says so in
    one line and exits with status 2 (so its workers stop too), instead of restarting forever."""
    env = {"DATABASE_URL": as_role(new_database(), SERVICE_ROLE), "REDIS_URL": redis_url, "WORKERS": workers}
    env |= {"METRICS_LISTEN": "", "LOG_FORMAT": "text", "JWT_SECRET": JWT_SECRET}
    stderr = refused_start("booking_service", env, listen=f"127.0.0.1:{free_port()}")
    reason = [line for line in stderr.splitlines() if line.startswith("booking_service: ")]
    assert reason and "permission denied for schema public" in reason[0], stderr  # each worker that got so far
    assert "MIGRATION_DATABASE_URL" in reason[0]
    assert stderr.count("database not reachable (InsufficientPrivilegeError") >= 2, stderr  # tried again first


def test_a_stop_while_the_database_refuses_ends_the_service_cleanly(
    new_database: Callable[[], str], redis_url: str, tmp_path: Path
) -> None:
    """SIGTERM between two refused tries (as when one worker gives up and its siblings are told to stop) is a
    clean stop: exit status 0 and no traceback, not the database's error raised again."""
    env = {"DATABASE_URL": as_role(new_database(), SERVICE_ROLE), "REDIS_URL": redis_url, "WORKERS": "1"}
    service = ServiceProcess("booking_service", env | {"LOG_FORMAT": "text", "JWT_SECRET": JWT_SECRET}, tmp_path)
    service.start(wait_serving=False)
    deadline = time.monotonic() + 30
    while "database not reachable (InsufficientPrivilegeError" not in service.log():
        assert time.monotonic() < deadline, service.log()
        time.sleep(0.05)
    service.signal(signal.SIGTERM)
    assert service.wait(30) == 0, service.log()
    assert "Traceback" not in service.log(), service.log()
    assert "stop asked while waiting for the database" in service.log()
