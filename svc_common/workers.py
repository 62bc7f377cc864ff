"""Every core: `python -m <service> --workers N` runs N processes of the service on one listen address
(SO_REUSEPORT: the kernel spreads new connections over them), supervised by this parent process.

A worker that dies is logged and replaced (with backoff, so a worker that cannot start does not spin); one that
exits with status 2 (bad settings, address in use) stops them all, since its siblings would fail the same way.
SIGTERM and SIGINT reach every worker, each drains and exits within its own bounded shutdown, and the parent
exits after them with status 0, or the first non-zero status a worker ended with on shutdown. A parent that dies
without that (SIGKILL, OOM) takes its workers with it: the kernel sends each SIGTERM (PR_SET_PDEATHSIG), so no
orphan keeps the address while a new instance starts.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from svc_common.backoff import Backoff
from svc_common.errors import ListenError

log = logging.getLogger(__name__)

WORKER_FLAG = "--worker"  # tells a child process it is one of the workers (and so binds with SO_REUSEPORT)
STOP_WAIT_SECONDS = 60.0  # after SIGTERM, how long workers get before they are killed (each bounds its own)
POLL_SECONDS = 0.2
STABLE_SECONDS = 60.0  # a worker that ran this long before dying is replaced without the grown backoff


def default_workers() -> int:
    """The number of CPUs this process may run on."""
    return len(os.sched_getaffinity(0))


def check_free(listen: str) -> None:
    """Refuse an address something already listens on (the workers' SO_REUSEPORT would share it silently)."""
    parts = urlsplit(f"//{listen}")
    if parts.port in (None, 0):
        raise ListenError(f"cannot listen on {listen}: workers need a fixed port")
    family = socket.AF_INET6 if ":" in (parts.hostname or "") else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # As grpc binds: connections of a previous instance lingering in TIME_WAIT do not hold the address.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((parts.hostname or "0.0.0.0", parts.port))
        except OSError as exc:
            raise ListenError(f"cannot listen on {listen}: {exc.strerror}") from exc


PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def follow_parent() -> None:
    """In a worker: be sent SIGTERM when the supervisor dies (Linux); already orphaned, stop now."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        log.warning("cannot ask to follow the supervisor (prctl: errno %d)", ctypes.get_errno())
    if os.getppid() == 1:  # the supervisor died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


class Workers:
    def __init__(self, module: str, listen: str, count: int, *, on_exit: Callable[[int], None] | None = None) -> None:
        self._command = [sys.executable, "-m", module, "--listen", listen, WORKER_FLAG]
        self._count = count
        self._on_exit = on_exit  # told the pid of each worker that ended
        self._workers: list[subprocess.Popen[bytes]] = []
        self._stopping = False
        self._backoff = Backoff(0.5, 10.0)
        self._started: dict[int, float] = {}  # pid -> when it started

    def _spawn(self) -> None:
        if self._stopping:
            return  # SIGTERM came while a replacement waited for its backoff
        worker = subprocess.Popen(self._command)
        self._workers.append(worker)
        self._started[worker.pid] = time.monotonic()
        log.info("worker %d started", worker.pid)
        if self._stopping:  # ... or as it started: it must stop with the others
            worker.send_signal(signal.SIGTERM)

    def _stop(self, *_: object) -> None:
        self._stopping = True
        for worker in self._workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._stop)
        for _ in range(self._count):
            self._spawn()
        status = 0
        while not self._stopping:
            time.sleep(POLL_SECONDS)
            for worker in list(self._workers):
                if self._stopping or worker.poll() is None:
                    continue  # once stopping, every worker is waited for (and its status kept) below
                self._workers.remove(worker)
                if self._on_exit is not None:
                    self._on_exit(worker.pid)
                if worker.returncode == 2:
                    log.error("worker %d cannot run (exit status 2); stopping", worker.pid)
                    status = 2
                    self._stop()
                    break
                if time.monotonic() - self._started.pop(worker.pid) > STABLE_SECONDS:
                    self._backoff.reset()  # a worker that ran a while failed on its own, not in a start-up loop
                delay = self._backoff.next()
                log.error("worker %d exited (%s); starting another in %.1fs", worker.pid, worker.returncode, delay)
                time.sleep(delay)
                self._spawn()
        deadline = time.monotonic() + STOP_WAIT_SECONDS
        for worker in self._workers:
            try:
                code = worker.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker %d did not stop; killing it", worker.pid)
                worker.kill()
                code = worker.wait()
            # -SIGTERM: a worker still starting (its handlers not installed yet) that had nothing to drain.
            clean = code in (0, -signal.SIGTERM)
            log.log(logging.INFO if clean else logging.ERROR, "worker %d stopped (exit status %s)", worker.pid, code)
            status = status or (0 if clean else code if code > 0 else 1)
        log.info("all workers stopped")
        return status
