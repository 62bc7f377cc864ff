"""Fixtures: a throwaway PostgreSQL cluster and real booking_service processes on free ports.

Set TEST_DATABASE_URL (a server URL whose user may create databases) to use an existing PostgreSQL instead.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import asyncpg
import grpc
import pytest

from booking.v1 import booking_pb2_grpc
from svc_common.devservers import PostgresServer
from tests.helpers import JWT_SECRET, Caller
from tests.servers import ServiceProcess


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    # Under /tmp with a traversable parent: PostgreSQL runs as the postgres user when we are root.
    path = Path(tempfile.mkdtemp(prefix="booking-tests-"))
    path.chmod(0o755)
    yield path
    if not os.environ.get("KEEP_TEST_FILES"):
        shutil.rmtree(path, ignore_errors=True)


def _create_database(server_url: str) -> str:
    name = f"t_{uuid.uuid4().hex[:12]}"

    async def create() -> None:
        conn = await asyncpg.connect(server_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    # In a thread of its own, so that async fixtures (inside a running loop) can call it too.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, create()).result()
    return name


def _with_database(server_url: str, database: str) -> str:
    base, _, _ = server_url.rpartition("/")
    return f"{base}/{database}"


@pytest.fixture(scope="session")
def postgres_url(workdir: Path) -> Iterator[str]:
    """A PostgreSQL server URL (private unless TEST_DATABASE_URL is set)."""
    given = os.environ.get("TEST_DATABASE_URL")
    if given:
        yield given
        return
    server = PostgresServer(workdir / "postgres", durable=False)
    server.start()
    yield server.url
    server.stop("immediate")


@pytest.fixture
def new_database(postgres_url: str) -> Callable[[], str]:
    """Makes a fresh, empty database and returns its URL."""
    return lambda: _with_database(postgres_url, _create_database(postgres_url))


@pytest.fixture(scope="session")
def booking_db_url(postgres_url: str) -> str:
    return _with_database(postgres_url, _create_database(postgres_url))


def booking_env(database_url: str) -> dict[str, str]:
    return {"DATABASE_URL": database_url, "JWT_SECRET": JWT_SECRET, "HEALTH_INTERVAL_SECONDS": "0.5"}


@pytest.fixture(scope="session")
def booking_server(booking_db_url: str, workdir: Path) -> Iterator[ServiceProcess]:
    """One booking_service process shared by the tests that do not stop or break it."""
    server = ServiceProcess("booking_service", booking_env(booking_db_url), workdir)
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def channel(booking_server: ServiceProcess) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(booking_server.address) as ch:
        yield ch


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> booking_pb2_grpc.BookingServiceStub:
    return booking_pb2_grpc.BookingServiceStub(channel)


@pytest.fixture
def caller(stub: booking_pb2_grpc.BookingServiceStub) -> Callable[[str, str], Caller]:
    """caller(role, sub) -> a client acting with a token for that role and id."""
    return lambda role, sub: Caller(stub, role, sub)


@pytest.fixture
async def db(booking_db_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A direct connection to the shared server's database, for checks the API cannot make."""
    conn = await asyncpg.connect(booking_db_url)
    yield conn
    await conn.close()
