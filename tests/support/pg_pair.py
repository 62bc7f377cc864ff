"""A PostgreSQL primary and a streaming standby made from it with `pg_basebackup -R`, started by the suite, as a
highly available deployment has them (Patroni, RDS Multi-AZ, Cloud SQL HA): replication asynchronous, the
standby promoted when the primary fails. Faults: the primary killed or frozen (SIGSTOP), its WAL sender frozen
so that the standby misses the last acknowledged transactions, and the standby's clock set back (libfaketime,
Debian's `faketime`) so that the new primary's clock is behind the old one's."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
from pathlib import Path

import asyncpg

from devtools.servers import CREATE_ROLES, OWNER_ROLE, PostgresServer, alive, children
from tests.support.events import eventually
from tests.support.helpers import uid

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


class PostgresPair:
    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir
        self.primary = PostgresServer(base_dir / "primary", durable=False)
        # The standby's clock: libfaketime reads its offset from this file at every call ("+0" until a test sets
        # it back), so the standby replays WAL on the real clock and runs on the offset once promoted.
        self.clock = base_dir / "standby-clock"
        prefix: tuple[str, ...] = ()
        if LIBFAKETIME.exists():
            prefix = (
                "env",
                f"LD_PRELOAD={LIBFAKETIME}",
                f"FAKETIME_TIMESTAMP_FILE={self.clock}",
                "FAKETIME_NO_CACHE=1",
            )
        self.standby = PostgresServer(base_dir / "standby", durable=False, prefix=prefix)
        self.stopped: list[int] = []  # pids this pair sent SIGSTOP, to be continued before stopping

    def start(self) -> None:
        self.primary.start()
        self._run(self.primary.url, *CREATE_ROLES)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.clock.write_text("+0\n")
        self.clock.chmod(0o644)
        folder = self.standby.base_dir
        folder.mkdir(parents=True, exist_ok=True)
        user = PostgresServer.run_as()
        if user:
            folder.chmod(0o755)
            shutil.chown(folder, user)
        subprocess.run(
            [
                *(str(self.standby.bindir / "pg_basebackup"), "-D", str(self.standby.data_dir), "-R"),
                *("-X", "stream", "-c", "fast", "-h", "127.0.0.1", "-p", str(self.primary.port), "-U", "postgres"),
            ],
            user=user,
            cwd=folder,
            check=True,
            capture_output=True,
            timeout=120,
        )
        self.standby.start()

    @staticmethod
    def _run(url: str, *statements: str) -> None:
        async def run() -> None:
            conn = await asyncpg.connect(url, timeout=10)
            try:
                for statement in statements:
                    await conn.execute(statement)
            finally:
                await conn.close()

        asyncio.run(run())

    async def create_database(self) -> str:
        """A fresh database owned by the booking owner role, once the standby has it too; its name."""
        name = uid("t").replace("-", "_")
        conn = await asyncpg.connect(self.primary.url, timeout=10)
        try:
            await conn.execute(f'CREATE DATABASE "{name}" OWNER {OWNER_ROLE}')
            lsn = await conn.fetchval("SELECT pg_current_wal_lsn()")
        finally:
            await conn.close()
        await self.wait_replayed(lsn)
        return name

    async def wait_replayed(self, lsn: str, within: float = 30.0) -> None:
        conn = await asyncpg.connect(self.standby.url, timeout=10)

        async def replayed() -> bool:
            return bool(await conn.fetchval("SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn", lsn))

        try:
            await eventually(replayed, lambda: f"the standby has not replayed {lsn}", within)
        finally:
            await conn.close()

    def url(self, database: str, user: str = "postgres") -> str:
        """Both hosts, the one that takes writes wanted: the URL a service is given."""
        hosts = f"127.0.0.1:{self.primary.port},127.0.0.1:{self.standby.port}"
        return f"postgresql://{user}@{hosts}/{database}?target_session_attrs=read-write"

    async def freeze_replication(self) -> None:
        """Stop the primary's WAL senders (SIGSTOP): what it commits from now on never reaches the standby, as
        with asynchronous replication and a network path to the standby that died first."""
        conn = await asyncpg.connect(self.primary.url, timeout=10)
        try:
            pids = [r["pid"] for r in await conn.fetch("SELECT pid FROM pg_stat_replication")]
        finally:
            await conn.close()
        assert pids, "the standby is not replicating"
        self._signal(pids, signal.SIGSTOP)

    def freeze_primary(self) -> None:
        """SIGSTOP the primary and all its processes: a hung host (connections open, nothing answers)."""
        postmaster = int((self.primary.data_dir / "postmaster.pid").read_text().split()[0])
        self._signal([postmaster, *children(postmaster)], signal.SIGSTOP)

    def _signal(self, pids: list[int], sig: signal.Signals) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        if sig == signal.SIGSTOP:
            self.stopped.extend(pids)

    def set_standby_clock(self, offset: str) -> None:
        """Set the standby's clock `offset` from the real one ("-30s")."""
        assert LIBFAKETIME.exists(), "libfaketime is not installed (Debian: apt-get install faketime)"
        self.clock.write_text(f"{offset}\n")

    def promote(self) -> None:
        """Promote the standby (`pg_ctl promote`, waiting until it takes writes)."""
        self.standby._cmd(str(self.standby.bindir / "pg_ctl"), "-D", str(self.standby.data_dir), "-w", "promote")

    def kill_primary(self) -> None:
        self.primary.kill()

    def stop(self) -> None:
        self._signal([pid for pid in self.stopped if alive(pid)], signal.SIGCONT)
        self.primary.kill()
        self.standby.stop("immediate")
