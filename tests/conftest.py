"""Fixtures: throwaway PostgreSQL and Redis servers and real booking_service processes on free ports.

Set TEST_DATABASE_URL (a server URL whose user may create databases) to use an existing PostgreSQL instead;
the databases the suite makes there are dropped at the end. Set TEST_REDIS_URL to use an existing Redis: each
test database gets its own event stream key there.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from pathlib import Path

import asyncpg
import grpc
import pytest

from booking_api.booking.v1 import booking_pb2_grpc
from devtools.servers import CREATE_ROLES, OWNER_ROLE, PostgresServer, RedisServer, describe_servers
from tests.support.bookingctl import Ctl
from tests.support.events import EventSystem, Subscription
from tests.support.helpers import Caller
from tests.support.servers import ServiceProcess, booking_env

# Services the suite starts serve no metrics unless a test asks: two on one host would collide on the defaults.
os.environ.setdefault("METRICS_LISTEN", "")

TIERS = ("unit", "integration", "system")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each test is marked with its tier, the folder it lives in (tests/unit, tests/integration, tests/system)."""
    for item in items:
        tier = next((part for part in item.path.parts[-3:-1] if part in TIERS), None)
        if tier is not None:
            item.add_marker(getattr(pytest.mark, tier))


def pytest_report_header() -> str:
    return f"servers: {describe_servers()}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed test's report shows the last lines of every service log written while it ran."""
    report = yield
    if report.failed:
        started = item.stash.get(_STARTED, 0.0)
        for process in ServiceProcess.instances:
            if process.logged_since(started):
                report.sections.append((f"{process.module} on {process.address} (last lines)", process.log_tail()))
    return report


_STARTED = pytest.StashKey[float]()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    item.stash[_STARTED] = time.time()


@pytest.fixture(autouse=True)
def _leaks_fail_the_test_that_made_them() -> Iterator[None]:
    """Collect garbage as each test ends, so that a resource it left open (a socket, a database connection)
    warns in its own teardown, naming it, and not in whichever later test the collector happens to run in.
    What is still alive then (modules, session fixtures) is moved out of the collector's way (gc.freeze), so
    the next collection walks only what the next test made: a millisecond, not the 20 that walking every
    module's objects again took (most of the unit tier's time)."""
    yield
    gc.collect()
    gc.freeze()


@pytest.fixture
async def watchers() -> AsyncIterator[list[Subscription]]:
    """Subscribers noting when each event arrived (tests.support.realtime), closed at the end of the test."""
    made: list[Subscription] = []
    yield made
    for watcher in made:
        await watcher.close()


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    # Under /tmp with a traversable parent: PostgreSQL runs as the postgres user when we are root.
    path = Path(tempfile.mkdtemp(prefix="booking-tests-"))
    path.chmod(0o755)
    yield path
    if not os.environ.get("KEEP_TEST_FILES"):
        shutil.rmtree(path, ignore_errors=True)


def _admin(server_url: str, *statements: str) -> None:
    """Run statements on a server's maintenance database, in a thread of its own so that async fixtures
    (inside a running loop) can call it too."""

    async def run() -> None:
        conn = await asyncpg.connect(server_url)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, run()).result()


class Databases:
    """Creates throwaway databases on one server, owned by the booking owner role (the service runs as its own
    role: see tests.support.servers.booking_env), and drops them all at the end of the session."""

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self.names: list[str] = []
        _admin(server_url, *CREATE_ROLES)

    def create(self) -> str:
        """A fresh database; returns its URL for the server's superuser."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        _admin(self.server_url, f'CREATE DATABASE "{name}" OWNER {OWNER_ROLE}')
        self.names.append(name)
        base, _, _ = self.server_url.rpartition("/")
        return f"{base}/{name}"

    def drop_all(self) -> None:
        _admin(self.server_url, *(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)' for name in self.names))


@pytest.fixture(scope="session")
def databases(workdir: Path) -> Iterator[Databases]:
    """Databases on a private PostgreSQL server, or on TEST_DATABASE_URL's server when that is set."""
    given = os.environ.get("TEST_DATABASE_URL")
    if given:
        made = Databases(given)
        yield made
        made.drop_all()
        return
    server = PostgresServer(workdir / "postgres", durable=False)
    server.start()
    yield Databases(server.url)
    server.stop("immediate")


@pytest.fixture
def new_database(databases: Databases) -> Callable[[], str]:
    """Makes a fresh, empty database and returns its URL."""
    return databases.create


@pytest.fixture(scope="session")
def booking_db_url(databases: Databases) -> str:
    return databases.create()


@pytest.fixture(scope="session")
def redis_url(workdir: Path) -> Iterator[str]:
    """The session's Redis: a private server, or TEST_REDIS_URL when that is set."""
    given = os.environ.get("TEST_REDIS_URL")
    if given:
        yield given
        return
    server = RedisServer(workdir / "redis")
    server.start()
    yield server.url
    server.stop()


@pytest.fixture(scope="session")
def booking_server(booking_db_url: str, redis_url: str, workdir: Path) -> Iterator[ServiceProcess]:
    """One booking_service process shared by the tests that do not stop or break it."""
    server = ServiceProcess("booking_service", booking_env(booking_db_url, redis_url), workdir)
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def channel(booking_server: ServiceProcess) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(booking_server.address) as ch:
        yield ch


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> booking_pb2_grpc.BookingServiceAsyncStub:
    return booking_pb2_grpc.BookingServiceStub(channel)


@pytest.fixture
def caller(stub: booking_pb2_grpc.BookingServiceAsyncStub) -> Callable[[str, str], Caller]:
    """caller(role, sub) -> a client acting with a token for that role and id."""
    return lambda role, sub: Caller(stub, role, sub)


@pytest.fixture
async def db(booking_db_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A direct connection to the shared server's database, for checks the API cannot make."""
    conn = await asyncpg.connect(booking_db_url)
    yield conn
    await conn.close()


@pytest.fixture
def system(workdir: Path, new_database: Callable[[], str]) -> Iterator[EventSystem]:
    """A whole event system of the test's own: a private Redis, a fresh database, the processes it starts."""
    made = EventSystem(workdir, new_database())
    made.redis.start()
    yield made
    made.stop()


@pytest.fixture
async def channels() -> AsyncIterator[list[grpc.aio.Channel]]:
    made: list[grpc.aio.Channel] = []
    yield made
    for channel in made:
        await channel.close()


@pytest.fixture
def ctl(system: EventSystem) -> Ctl:
    """bookingctl against a booking and a notify instance of `system`."""
    return Ctl(system.booking(), system.notify())
