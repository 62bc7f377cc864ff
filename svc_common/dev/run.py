"""`make run`: start the booking and notify services locally, with private PostgreSQL and Redis servers if needed.

DATABASE_URL and REDIS_URL are used when they answer; otherwise private servers are started from the
installed binaries under `.local/` in the project folder (kept between runs) and stopped on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg

from svc_common.dev.servers import (
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
    redis_binary,
)
from svc_common.redis_client import SENTINEL_SCHEME, SentinelTarget

PROJECT = Path(__file__).resolve().parents[2]
LOCAL = PROJECT / ".local"
PRIVATE_PG_PORT = 55432
PRIVATE_REDIS_PORT = 56379
DATABASE = "booking"


def say(message: str) -> None:
    print(f"make run: {message}", flush=True)


async def _postgres_answers(url: str) -> bool:
    try:
        conn = await asyncpg.connect(url, timeout=3)
    except (OSError, TimeoutError, asyncpg.PostgresError):
        return False
    await conn.close()
    return True


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


def _redis_answers(url: str) -> bool:
    """Whether the Redis `url` names answers (for a redis+sentinel:// URL: whether its first sentinel does)."""
    if url.startswith(f"{SENTINEL_SCHEME}://"):
        try:
            host, port = SentinelTarget.parse(url).sentinels[0]
        except ValueError:
            return False
    else:
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    try:
        with socket.create_connection((host, port), timeout=2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


@contextlib.contextmanager
def database(env: dict[str, str]) -> Iterator[None]:
    url = env.get("DATABASE_URL", "")
    if url and asyncio.run(_postgres_answers(url)):
        say(f"using DATABASE_URL {url}")
        yield
        return
    folder = "postgres-embedded" if from_wheel(postgres_bindir()) else "postgres"
    say(f"DATABASE_URL {'does not answer' if url else 'is not set'}; starting a private PostgreSQL in .local/{folder}")
    server = PostgresServer(LOCAL / folder, port=PRIVATE_PG_PORT)
    if not server.running():
        server.start()
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
        server.stop()


@contextlib.contextmanager
def redis(env: dict[str, str]) -> Iterator[None]:
    url = env.get("REDIS_URL", "")
    if url and _redis_answers(url):
        say(f"using REDIS_URL {url}")
        yield
        return
    if env.get("SENTINEL") == "1":  # make cluster SENTINEL=1: a primary, a replica and three sentinels
        group = SentinelGroup(LOCAL / "sentinel")
        say("starting a private Redis primary, replica and three Sentinels in .local/sentinel")
        group.start()
        env["REDIS_URL"] = group.url
        say(f"REDIS_URL={group.url} (primary on {group.primary.port}, replica on {group.replica.port})")
        try:
            yield
        finally:
            group.stop()
        return
    folder = "redis-embedded" if from_wheel(redis_binary()) else "redis"
    say(f"REDIS_URL {'does not answer' if url else 'is not set'}; starting a private Redis in .local/{folder}")
    server = RedisServer(LOCAL / folder, port=PRIVATE_REDIS_PORT, persist=True)
    server.start()
    env["REDIS_URL"] = server.url
    say(f"REDIS_URL={env['REDIS_URL']}")
    try:
        yield
    finally:
        server.stop()


def main() -> int:
    env = dict(os.environ)
    say(f"local servers, if needed: {describe_servers()}")
    services = {
        "booking_service": env.get("BOOKING_LISTEN", "127.0.0.1:50051"),
        "notify_service": env.get("NOTIFY_LISTEN", "127.0.0.1:50052"),
    }
    with database(env), redis(env):
        processes = []
        for module, listen in services.items():
            say(f"starting {module} on {listen}")
            processes.append(subprocess.Popen([sys.executable, "-m", module, "--listen", listen], env=env))
        say("running (Ctrl-C stops both)")

        # On Ctrl-C or SIGTERM, stop the services gracefully, then the private servers (as the with-blocks exit).
        def stop(*_: object) -> None:
            for process in processes:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)

        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, stop)
        while all(process.poll() is None for process in processes):
            time.sleep(0.2)
        stop()  # one ended by itself: stop the other too
        return max(process.wait() for process in processes)


if __name__ == "__main__":
    sys.exit(main())
