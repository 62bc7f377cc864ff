"""`make run`: start the booking service locally, with private PostgreSQL and Redis servers if needed.

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
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg

from svc_common.devservers import PostgresServer, RedisServer

PROJECT = Path(__file__).resolve().parents[2]
LOCAL = PROJECT / ".local"
PRIVATE_PG_PORT = 55432
PRIVATE_REDIS_PORT = 56379
DATABASE = "booking"


def _say(message: str) -> None:
    print(f"make run: {message}", flush=True)


async def _postgres_answers(url: str) -> bool:
    try:
        conn = await asyncpg.connect(url, timeout=3)
    except (OSError, TimeoutError, asyncpg.PostgresError):
        return False
    await conn.close()
    return True


async def _ensure_database(server_url: str, database: str) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database):
            await conn.execute(f'CREATE DATABASE "{database}"')
    finally:
        await conn.close()


def _redis_answers(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), timeout=2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


@contextlib.contextmanager
def _database(env: dict[str, str]) -> Iterator[None]:
    url = env.get("DATABASE_URL", "")
    if url and asyncio.run(_postgres_answers(url)):
        _say(f"using DATABASE_URL {url}")
        yield
        return
    _say(f"DATABASE_URL {'does not answer' if url else 'is not set'}; starting a private PostgreSQL in .local/postgres")
    server = PostgresServer(LOCAL / "postgres", port=PRIVATE_PG_PORT)
    if not server.running():
        server.start()
    asyncio.run(_ensure_database(server.url, DATABASE))
    env["DATABASE_URL"] = server.url_for(DATABASE)
    _say(f"DATABASE_URL={env['DATABASE_URL']}")
    try:
        yield
    finally:
        server.stop()


@contextlib.contextmanager
def _redis(env: dict[str, str]) -> Iterator[None]:
    url = env.get("REDIS_URL", "")
    if url and _redis_answers(url):
        _say(f"using REDIS_URL {url}")
        yield
        return
    _say(f"REDIS_URL {'does not answer' if url else 'is not set'}; starting a private Redis in .local/redis")
    server = RedisServer(LOCAL / "redis", port=PRIVATE_REDIS_PORT, persist=True)
    server.start()
    env["REDIS_URL"] = server.url
    _say(f"REDIS_URL={env['REDIS_URL']}")
    try:
        yield
    finally:
        server.stop()


def main() -> int:
    env = dict(os.environ)
    listen = env.get("BOOKING_LISTEN", "127.0.0.1:50051")
    with _database(env), _redis(env):
        _say(f"starting the booking service on {listen} (Ctrl-C stops it)")
        service = subprocess.Popen([sys.executable, "-m", "booking_service", "--listen", listen], env=env)
        # On Ctrl-C or SIGTERM, stop the service gracefully, then the private servers (as the with-blocks exit).
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: service.send_signal(signal.SIGTERM))
        return service.wait()


if __name__ == "__main__":
    sys.exit(main())
