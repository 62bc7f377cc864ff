"""`make run` (devtools.run) as a newcomer runs it, twice by mistake: the second refuses in one line before
it starts or stops anything, the first keeps serving, and a run stops only the private servers it started.

Each test keeps the private servers in a folder of its own (MAKE_RUN_LOCAL), on free ports of its own
(LOCAL_POSTGRES_PORT, LOCAL_REDIS_PORT), so the suite passes beside a `make run` of the same checkout. A
DATABASE_URL or REDIS_URL that is set is used or refused, with the server's reason and the password redacted,
never replaced by a private server."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2

from devtools.run import POSTGRES_FOLDER, postgres_folder
from devtools.servers import PostgresServer, free_port
from svc_common.healthcheck import serving_status
from tests.support.helpers import JWT_SECRET
from tests.support.servers import PROJECT

pytestmark = pytest.mark.timeout(240)
SERVING = health_pb2.HealthCheckResponse.SERVING


@dataclass(frozen=True)
class Local:
    """make run's folder and the ports of its private servers, for one test."""

    folder: Path
    postgres_port: int = field(default_factory=free_port)
    redis_port: int = field(default_factory=free_port)

    def postgres(self) -> PostgresServer:
        return PostgresServer(postgres_folder(POSTGRES_FOLDER, self.folder), port=self.postgres_port)


class MakeRun:
    """One `python -m devtools.run` (what `make run` runs), its output collected in a file."""

    def __init__(self, local: Local, name: str, **env: str) -> None:
        self.booking, self.notify = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        self.output = local.folder.parent / f"{name}.out"
        self.env = {
            **os.environ,
            "MAKE_RUN_LOCAL": str(local.folder),
            "LOCAL_POSTGRES_PORT": str(local.postgres_port),
            "LOCAL_REDIS_PORT": str(local.redis_port),
            "BOOKING_LISTEN": self.booking,
            "NOTIFY_LISTEN": self.notify,
            "METRICS_LISTEN": "",
            "DATABASE_URL": "",
            "REDIS_URL": "",
            "JWT_SECRET": JWT_SECRET,
            **env,
        }
        with self.output.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "devtools.run"], env=self.env, cwd=PROJECT, stdout=out, stderr=out
            )

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def wait_for(self, words: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while words not in self.text():
            assert self.process.poll() is None, f"make run ended ({self.process.returncode}):\n{self.text()}"
            assert time.monotonic() < deadline, f"no {words!r} after {timeout}s:\n{self.text()}"
            time.sleep(0.2)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        return self.process.wait(timeout=60)


@pytest.fixture
def local(tmp_path: Path) -> Iterator[Local]:
    """make run's folder; pytest's are mode 700, as a root's home is (PostgreSQL runs as another user then)."""
    made = Local(tmp_path / "local")
    yield made
    server = made.postgres()
    if server.running():  # what a failed test left running
        server.stop("immediate")
    if not server.base_dir.is_relative_to(made.folder):
        shutil.rmtree(server.base_dir.parent, ignore_errors=True)


def postgres_answers(local: Local) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", local.postgres_port), timeout=1):
            return True
    except OSError:
        return False


def test_a_second_make_run_refuses_in_one_line_and_the_first_keeps_serving(local: Local) -> None:
    first = MakeRun(local, "first")
    try:
        first.wait_for("both services SERVING")
        assert "Ctrl-C" not in first.text().split("both services SERVING")[0], "announced before serving"
        second = MakeRun(local, "second")
        assert second.process.wait(timeout=30) == 1
        lines = second.text().strip().splitlines()
        assert len(lines) == 1 and "refused" in lines[0] and "make run (pid" in lines[0], lines
        time.sleep(1)  # what a second run did on its way out would have done it by now
        assert serving_status(first.booking) == SERVING and serving_status(first.notify) == SERVING
        assert postgres_answers(local)
        assert f"on port {local.postgres_port}" in first.text() and f"on port {local.redis_port}" in first.text()
        assert "Traceback" not in first.text()
        if os.geteuid() == 0:  # initdb as the postgres user could not reach a folder under tmp_path
            assert str(postgres_folder(POSTGRES_FOLDER, local.folder)).startswith("/var/tmp/"), first.text()
    finally:
        assert first.stop() == 0, first.text()
    assert not postgres_answers(local), "the private PostgreSQL this run started is still running"


def test_make_run_refuses_addresses_in_use_before_starting_anything(local: Local) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        run = MakeRun(local, "run")
        run.env["BOOKING_LISTEN"] = f"127.0.0.1:{taken.getsockname()[1]}"
        run.process.kill()
        run.process.wait()
        with run.output.open("wb") as out:
            status = subprocess.run(
                [sys.executable, "-m", "devtools.run"], env=run.env, cwd=PROJECT, stdout=out, stderr=out
            ).returncode
    lines = run.text().strip().splitlines()
    assert status == 1 and len(lines) == 1 and "is not free" in lines[0], lines
    assert not postgres_folder(POSTGRES_FOLDER, local.folder).exists(), "a private PostgreSQL was set up first"


def test_make_run_uses_a_private_postgres_left_running_and_leaves_it_running(local: Local) -> None:
    leftover = local.postgres()
    leftover.start()
    try:
        run = MakeRun(local, "run")
        run.wait_for("both services SERVING")
        assert "already running" in run.text()
        assert run.stop() == 0, run.text()
        assert leftover.running(), "make run stopped a PostgreSQL it did not start"
    finally:
        leftover.stop()


@pytest.mark.parametrize(
    ("name", "url", "words"),
    [
        ("DATABASE_URL", "postgresql://nobody:s3cret@127.0.0.1:{pg}/postgres", 'role "nobody" does not exist'),
        ("DATABASE_URL", "postgresql://postgres:s3cret@127.0.0.1:{pg}/nowhere", 'database "nowhere" does not exist'),
        ("DATABASE_URL", "postgresql://postgres:s3cret@127.0.0.1:{free}/booking", "cannot be used"),
        ("REDIS_URL", "redis://:s3cret@127.0.0.1:{free}/0", "cannot be used"),
    ],
    ids=["unknown role", "unknown database", "no server", "no redis"],
)
def test_a_url_that_is_set_but_refuses_stops_make_run_with_the_reason_and_no_password(
    local: Local, name: str, url: str, words: str
) -> None:
    """Only an unset variable means private servers: a set one that refuses (or does not answer) is the
    operator's mistake, said in one line with the server's own words and the password redacted."""
    server = local.postgres()
    server.start()  # a real server to refuse
    try:
        run = MakeRun(local, "run", **{name: url.format(pg=local.postgres_port, free=free_port())})
        assert run.process.wait(timeout=60) == 1, run.text()
    finally:
        server.stop()
    lines = run.text().strip().splitlines()
    assert "refused" in lines[-1] and name in lines[-1] and words in lines[-1], lines
    assert "s3cret" not in run.text(), run.text()
    assert "starting booking_service" not in run.text()


def test_two_checkouts_run_side_by_side_with_the_documented_line(tmp_path: Path) -> None:
    """A second checkout (its own .local/) beside the first, on the ports the README's line chooses (here free
    ones): both serve at once, each on its own private servers."""
    first, second = Local(tmp_path / "one" / "local"), Local(tmp_path / "two" / "local")
    for local in (first, second):
        local.folder.parent.mkdir()
    runs = [MakeRun(local, "run") for local in (first, second)]
    try:
        for run in runs:
            run.wait_for("both services SERVING")
        for run in runs:
            assert serving_status(run.booking) == SERVING and serving_status(run.notify) == SERVING
        assert postgres_answers(first) and postgres_answers(second)
    finally:
        for run in runs:
            assert run.stop() == 0, run.text()
        for local in (first, second):
            if local.postgres().running():
                local.postgres().stop("immediate")
