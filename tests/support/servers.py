"""Real booking_service processes for tests: started with `python -m booking_service`, stopped by signal."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2

from devtools.cluster import nginx_binary
from devtools.servers import OWNER_ROLE, SERVICE_ROLE, as_role, free_port
from svc_common.healthcheck import serving_status
from svc_common.settings import Env
from svc_common.tls import client_channel_options, client_credentials
from tests.support.helpers import JWT_SECRET

PROJECT = Path(__file__).resolve().parents[2]


class ServiceProcess:
    """One service process on a free port; its log is kept for failing tests to show (see conftest's report hook,
    which adds the tail of every log written during a failed test)."""

    instances: ClassVar[list[ServiceProcess]] = []

    def __init__(
        self, module: str, env: dict[str, str], log_dir: Path, port: int | None = None, project: Path = PROJECT
    ) -> None:
        ServiceProcess.instances.append(self)
        self.module = module
        # Another checkout runs on its own virtualenv's Python (the benchmarks' --baseline).
        self.project = project
        self.python = sys.executable if project == PROJECT else str(project / ".venv" / "bin" / "python")
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        # No metrics unless a test asks (the default addresses would collide between instances).
        self.env = {**os.environ, "METRICS_LISTEN": "", **env}
        self.log_path = log_dir / f"{module}-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *, wait_serving: bool = True, timeout: float = 60.0) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [self.python, "-m", self.module, "--listen", self.address],
                env=self.env,
                cwd=self.project,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if wait_serving:
            self.wait_serving(timeout)

    def health(self, service: str = "") -> int:
        """Its health, asked as its own health check would (over TLS when it speaks TLS)."""
        return serving_status(
            self.address,
            service,
            timeout=2,
            credentials=client_credentials(Env(self.env)),
            options=client_channel_options(Env(self.env)),
        )

    def wait_serving(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"{self.module} exited with {self.process.returncode}:\n{self.log()}")
            try:
                if self.health() == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.module} not serving after {timeout}s:\n{self.log()}")

    async def wait_health(self, wanted: int, service: str = "", within: float = 30.0) -> None:
        """Wait until health for `service` reports `wanted` (no answer counts as not yet)."""

        async def status() -> int | None:
            try:
                return await asyncio.to_thread(self.health, service)
            except grpc.RpcError:
                return None

        deadline = time.monotonic() + within
        while (got := await status()) != wanted:
            assert time.monotonic() < deadline, f"{self.module} health {service!r} is {got}, not {wanted}"
            await asyncio.sleep(0.1)

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def logged_since(self, when: float) -> bool:
        return self.log_path.exists() and self.log_path.stat().st_mtime >= when


def require_nginx() -> None:
    """Skip the test, in one line saying how to get them run, where nginx is not installed; where every test must
    run (TESTS_REQUIRE_ALL=1: CI), fail instead."""
    try:
        nginx_binary()
    except RuntimeError as missing:
        if os.environ.get("TESTS_REQUIRE_ALL") == "1":
            raise
        pytest.skip(f"{missing}: the tests behind the balancer need it")


def stream_key(database_url: str) -> str:
    """The event stream of the booking database at `database_url` (test databases share one Redis)."""
    return f"test-events:{database_url.rpartition('/')[2]}"


def booking_env(database_url: str, redis_url: str, *, least_privilege: bool = True) -> dict[str, str]:
    """A booking instance on the database at `database_url` (a superuser's URL). With `least_privilege` (the
    database made by the suite, owned by OWNER_ROLE), it runs as SERVICE_ROLE and migrates as OWNER_ROLE;
    without, as the URL's user for both."""
    roles = (
        {
            "DATABASE_URL": as_role(database_url, SERVICE_ROLE),
            "MIGRATION_DATABASE_URL": as_role(database_url, OWNER_ROLE),
        }
        if least_privilege
        else {"DATABASE_URL": database_url}
    )
    return {
        **roles,
        "REDIS_URL": redis_url,
        "EVENT_STREAM_KEY": stream_key(database_url),
        "JWT_SECRET": JWT_SECRET,
        "HEALTH_INTERVAL_SECONDS": "0.5",
        "WORKERS": "1",  # one process, whose pid is the server's (tests with workers set their own)
    }


def notify_env(database_url: str, redis_url: str) -> dict[str, str]:
    """A notify instance following the event stream of the booking database at `database_url` (a superuser's
    URL; it reads the outbox, while Redis cannot be read, as SERVICE_ROLE)."""
    return {
        "REDIS_URL": redis_url,
        "DATABASE_URL": as_role(database_url, SERVICE_ROLE),
        "EVENT_STREAM_KEY": stream_key(database_url),
        "JWT_SECRET": JWT_SECRET,
        "WORKERS": "1",
    }


async def terminate_backends(database_url: str, database: str) -> int:
    """Terminate every connection to `database` (from the server's maintenance database); returns how many."""
    conn = await asyncpg.connect(database_url.rpartition("/")[0] + "/postgres")
    try:
        return len(
            await conn.fetch(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                database,
            )
        )
    finally:
        await conn.close()


def refused_start(module: str, env: dict[str, str], listen: str = "127.0.0.1:0") -> str:
    """Start `module` with `env` (on top of this process's) expecting it to refuse: exit status 2, no
    traceback; returns what it wrote to stderr."""
    done = subprocess.run(
        [sys.executable, "-m", module, "--listen", listen],
        env={**os.environ, **env},
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    return done.stderr
