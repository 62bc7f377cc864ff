"""`make run`: start the booking and notify services locally, with private PostgreSQL and Redis servers if needed.

DATABASE_URL and REDIS_URL are used when they answer; otherwise private servers are started from the
installed binaries under `.local/` in the project folder (kept between runs) and stopped on exit. Only one
`make run` or `make cluster` uses a checkout's `.local/` at a time (a lock there); a second one, or one whose
addresses are taken, refuses before it starts or stops anything, and a run stops only the servers it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import asyncpg
import grpc
from grpc_health.v1 import health_pb2

from devtools.servers import (
    CREATE_ROLES,
    OWNER_ROLE,
    SERVICE_ROLE,
    PostgresServer,
    RedisServer,
    SentinelGroup,
    as_role,
    describe_servers,
    from_wheel,
    postgres_bindir,
    reachable_by,
    redis_binary,
)
from svc_common import probes
from svc_common.healthcheck import serving_status
from svc_common.postgres import Connector
from svc_common.redis_client import RedisConfig
from svc_common.settings import redact_url

PROJECT = Path(__file__).resolve().parents[1]
# MAKE_RUN_LOCAL: another folder for the private servers and the lock (the tests use their own).
LOCAL = Path(os.environ.get("MAKE_RUN_LOCAL", PROJECT / ".local")).resolve()
# The private servers' ports (LOCAL_POSTGRES_PORT, LOCAL_REDIS_PORT choose others: a second checkout, or the tests).
PRIVATE_PG_PORT = 55432
PRIVATE_REDIS_PORT = 56379
DATABASE = "booking"
POSTGRES_FOLDER = "postgres-embedded" if from_wheel(postgres_bindir()) else "postgres"


SPEAKER = {"name": "make run"}  # `make cluster` says so (devtools.cluster)


def say(message: str) -> None:
    print(f"{SPEAKER['name']}: {message}", flush=True)


def shown(folder: Path) -> Path:
    """`folder` as make run reports it: relative to the project when inside it (.local/postgres)."""
    return folder.relative_to(PROJECT) if folder.is_relative_to(PROJECT) else folder


class Refused(Exception):
    """This run cannot start; nothing was started or stopped (the message is one line)."""


@contextlib.contextmanager
def claim_local(what: str = "make run") -> Iterator[None]:
    """Hold `.local/run.lock` for the run: a second `make run` or `make cluster` in this checkout is refused."""
    LOCAL.mkdir(exist_ok=True)
    lock: IO[str] = (LOCAL / "run.lock").open("a+")
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            raise Refused(f"{holder} already uses .local/ in this checkout: stop it first (Ctrl-C there)") from None
        lock.truncate(0)
        lock.write(f"{what} (pid {os.getpid()})")
        lock.flush()
        yield
    finally:
        lock.close()  # closing releases the lock


def check_free(
    addresses: list[str],
    hint: str = "is another make run up? Stop it, or choose other addresses (BOOKING_LISTEN, NOTIFY_LISTEN)",
) -> None:
    """Refuse if something already listens on one of `addresses` (HOST:PORT); `hint` says what to do."""
    for address in addresses:
        host, _, port = address.rpartition(":")
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the gRPC server binds
            try:
                sock.bind((host.strip("[]") or "0.0.0.0", int(port)))
            except OSError as exc:
                raise Refused(f"{address} is not free ({exc.strerror}): {hint}") from None


def postgres_folder(name: str, local: Path = LOCAL) -> Path:
    """Where the private PostgreSQL keeps its data: `.local/<name>`, unless PostgreSQL runs as another user (we
    are root) who cannot reach it (a checkout under a mode-700 home): then a folder of /var/tmp named after
    this checkout, kept between runs as `.local/` would be."""
    wanted = local / name
    user = PostgresServer.run_as()
    if user is None or reachable_by(user, local):
        return wanted
    digest = hashlib.sha256(str(local).encode()).hexdigest()[:12]
    return Path("/var/tmp") / f"booking-make-run-{digest}" / name


def wait_until_serving(
    addresses: dict[str, str], processes: list[subprocess.Popen[bytes]], env: dict[str, str]
) -> bool:
    """Wait until every service reports SERVING (True), or one of `processes` ends (False). Services that speak
    TLS (TLS_CERT_FILE) are not checked here (True at once): `python -m svc_common.healthcheck` checks them."""
    waiting = {} if env.get("TLS_CERT_FILE") else dict(addresses)
    while waiting:
        if any(process.poll() is not None for process in processes):
            return False
        for name, address in list(waiting.items()):
            with contextlib.suppress(grpc.RpcError):
                if serving_status(address.replace("0.0.0.0", "127.0.0.1"), timeout=1) == SERVING:
                    del waiting[name]
        time.sleep(0.2)
    return True


SERVING = health_pb2.HealthCheckResponse.SERVING


async def _postgres_refusal(url: str) -> str | None:
    """Why the PostgreSQL at `url` cannot be used (the server's own words: authentication, an unknown database,
    TLS), or None if a connection works."""
    try:
        conn = await Connector(url)(timeout=3)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    await conn.close()
    return None


async def _ensure_database(server_url: str, database: str) -> bool:
    """Create the booking roles and, if missing, the database, owned by OWNER_ROLE. Returns whether the database
    is owned by OWNER_ROLE (one made by an older `make run` is not, and is then used with one role)."""
    conn = await asyncpg.connect(server_url)
    try:
        for statement in CREATE_ROLES:
            await conn.execute(statement)
        owner = await conn.fetchval("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = $1", database)
        if owner is None:
            await conn.execute(f'CREATE DATABASE "{database}" OWNER {OWNER_ROLE}')
            owner = OWNER_ROLE
    finally:
        await conn.close()
    return bool(owner == OWNER_ROLE)


def _redis_refusal(env: dict[str, str]) -> str | None:
    """Why the Redis of REDIS_URL cannot be used (the server's own words: authentication, an ACL), or None if
    it answers (svc_common.probes: as the services connect, Sentinel included)."""
    try:
        asyncio.run(
            asyncio.wait_for(
                probes.redis(RedisConfig(env["REDIS_URL"], 3.0, env.get("REDIS_SENTINEL_PASSWORD", ""))), 10
            )
        )
    except Exception as exc:  # noqa: BLE001 - whatever stops it from answering is the answer
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return None


def _port(env: dict[str, str], name: str, default: int) -> int:
    text = env.get(name) or str(default)
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise Refused(f"{name} must be a port from 1 to 65535, got {text!r}")
    return int(text)


@contextlib.contextmanager
def database(env: dict[str, str]) -> Iterator[None]:
    url = env.get("DATABASE_URL", "")
    if url:  # the operator's choice: used, or refused with the server's reason, never silently replaced
        refusal = asyncio.run(_postgres_refusal(url))
        if refusal is not None:
            raise Refused(
                f"DATABASE_URL {redact_url(url)} cannot be used ({refusal}); fix it, or unset it for a private "
                "PostgreSQL"
            )
        say(f"using DATABASE_URL {redact_url(url)}")
        yield
        return
    folder = postgres_folder(POSTGRES_FOLDER)
    port = _port(env, "LOCAL_POSTGRES_PORT", PRIVATE_PG_PORT)
    say(f"DATABASE_URL is not set; a private PostgreSQL in {shown(folder)} on port {port}")
    server = PostgresServer(folder, port=port)
    if not server.running():
        check_free([f"127.0.0.1:{port}"], hint="set LOCAL_POSTGRES_PORT to another port")
    started = not server.running()
    if started:
        server.start()
    else:
        say("its server was already running (left by an earlier run): used, and left running")
    url = server.url_for(DATABASE)
    if asyncio.run(_ensure_database(server.url, DATABASE)):
        env["DATABASE_URL"], env["MIGRATION_DATABASE_URL"] = as_role(url, SERVICE_ROLE), as_role(url, OWNER_ROLE)
        say(f"MIGRATION_DATABASE_URL={env['MIGRATION_DATABASE_URL']} (the owner role applies the migrations)")
    else:
        env["DATABASE_URL"] = url
    say(f"DATABASE_URL={env['DATABASE_URL']}")
    try:
        yield
    finally:
        if started:
            server.stop()


@contextlib.contextmanager
def redis(env: dict[str, str]) -> Iterator[None]:
    url = env.get("REDIS_URL", "")
    if url:  # the operator's choice: used, or refused, never silently replaced
        refusal = _redis_refusal(env)
        if refusal is not None:
            raise Refused(
                f"REDIS_URL {redact_url(url)} cannot be used ({refusal}); fix it, or unset it for a private Redis"
            )
        say(f"using REDIS_URL {redact_url(url)}")
        yield
        return
    if env.get("SENTINEL") == "1":  # make cluster SENTINEL=1: a primary, a replica and three sentinels
        group = SentinelGroup(LOCAL / "sentinel")
        say(f"starting a private Redis primary, replica and three Sentinels in {shown(group.base_dir)}")
        group.start()
        env["REDIS_URL"] = group.url
        say(f"REDIS_URL={group.url} (primary on {group.primary.port}, replica on {group.replica.port})")
        try:
            yield
        finally:
            group.stop()
        return
    folder = LOCAL / ("redis-embedded" if from_wheel(redis_binary()) else "redis")
    port = _port(env, "LOCAL_REDIS_PORT", PRIVATE_REDIS_PORT)
    say(f"REDIS_URL is not set; starting a private Redis in {shown(folder)} on port {port}")
    check_free([f"127.0.0.1:{port}"], hint="set LOCAL_REDIS_PORT to another port")
    server = RedisServer(folder, port=port, persist=True)
    server.start()
    env["REDIS_URL"] = server.url
    say(f"REDIS_URL={env['REDIS_URL']}")
    try:
        yield
    finally:
        server.stop()


def main() -> int:
    env = dict(os.environ)
    services = {
        "booking_service": env.get("BOOKING_LISTEN", "127.0.0.1:50051"),
        "notify_service": env.get("NOTIFY_LISTEN", "127.0.0.1:50052"),
    }
    try:
        with claim_local():
            check_free(list(services.values()))
            say(f"local servers, if needed: {describe_servers()}")
            with database(env), redis(env):
                return serve(services, env)
    except Refused as refused:
        say(f"refused: {refused}")
        return 1


def serve(services: dict[str, str], env: dict[str, str]) -> int:
    processes = []
    for module, listen in services.items():
        say(f"starting {module} on {listen}")
        processes.append(subprocess.Popen([sys.executable, "-m", module, "--listen", listen], env=env))

    # On Ctrl-C or SIGTERM, stop the services gracefully, then the private servers (as the with-blocks exit).
    def stop(*_: object) -> None:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)
    booking, notify = services.values()
    if env.get("TLS_CERT_FILE"):  # their health is checked with their TLS settings: python -m svc_common.healthcheck
        say(f"both services started, speaking TLS: booking on {booking}, notify on {notify} (Ctrl-C stops both)")
    elif wait_until_serving({"booking": booking, "notify": notify}, processes, env):
        say(f"both services SERVING: booking on {booking}, notify on {notify} (Ctrl-C stops both)")
    while all(process.poll() is None for process in processes):
        time.sleep(0.2)
    stop()  # one ended by itself: stop the other too
    return max(process.wait() for process in processes)


if __name__ == "__main__":
    sys.exit(main())
