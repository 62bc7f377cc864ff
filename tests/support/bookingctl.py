"""bookingctl as an operator runs it, for the tests: a subprocess against real services (`Ctl`), and at a real
terminal (a pseudo-terminal) to answer its questions (`at_terminal`)."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.support.helpers import JWT_SECRET, fresh_slot, token, uid
from tests.support.servers import PROJECT, ServiceProcess


class Ctl:
    def __init__(self, booking: ServiceProcess, notify: ServiceProcess) -> None:
        self.notify = notify
        self.base = [
            sys.executable,
            "-m",
            "booking_client.cli",
            "--target",
            booking.address,
            "--notify-target",
            notify.address,
        ]
        self.env = {**os.environ, "BOOKING_TOKEN": token("admin", "ops"), "JWT_SECRET": JWT_SECRET}

    def __call__(self, *args: str, token: str | None = None, stdin: str = "") -> subprocess.CompletedProcess[str]:
        env = self.env if token is None else {**self.env, "BOOKING_TOKEN": token}
        return subprocess.run(
            [*self.base, *args], env=env, cwd=PROJECT, capture_output=True, text=True, input=stdin, timeout=60
        )

    def json(self, *args: str, token: str | None = None) -> Any:
        done = self(*args, token=token)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


def iso(value: datetime) -> str:
    return value.isoformat()


def create(ctl: Ctl, provider: str, *more: str) -> dict[str, Any]:
    """A booking made with `bookingctl create` in a slot of its own, as JSON."""
    start, end = fresh_slot()
    made = ctl.json("create", "--service", "haircut", "--provider", provider, "--customer", "c",
                    "--start", iso(start), "--end", iso(end), *more)  # fmt: skip
    made_booking: dict[str, Any] = made
    return made_booking


def soft_deleted(ctl: Ctl, count: int) -> list[str]:
    ids = []
    for _ in range(count):
        made = create(ctl, uid("p"))
        ctl.json("delete", made["id"])
        ids.append(made["id"])
    return ids


def as_at_a_terminal() -> None:
    """In the child, before it runs: SIGINT as at an interactive terminal. A command started in the background
    by a non-interactive shell (CI's runner may be one) inherits SIGINT ignored, and Python keeps it ignored,
    so a Ctrl-C sent by the test would never arrive."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def at_terminal(command: list[str], env: dict[str, str], answer: str | signal.Signals) -> tuple[int, str]:
    """Run `command` with a pseudo-terminal as its stdin and stdout; answer its question (a line, Ctrl-D as
    "\x04", or a signal as Ctrl-C sends); return its exit status (within 10 s of the answer) and what it
    printed."""
    master, slave = pty.openpty()
    process = subprocess.Popen(
        command, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=PROJECT, preexec_fn=as_at_a_terminal
    )
    os.close(slave)
    seen, answered = b"", False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the process closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        if not answered and b"[y/N]" in seen:
            if isinstance(answer, signal.Signals):
                process.send_signal(answer)
            else:
                os.write(master, answer.encode() + (b"" if answer == "\x04" else b"\n"))
            answered = True
            deadline = time.monotonic() + 10  # the answer must end it (closing the terminal would, later)
        if process.poll() is not None and not ready:
            break
    with contextlib.suppress(subprocess.TimeoutExpired):  # the terminal closes just before the process is gone
        process.wait(max(0.0, deadline - time.monotonic()))
    if process.poll() is None:
        spy = [str(Path(sys.executable).parent / "py-spy"), "dump", "--pid", str(process.pid)]
        stacks = subprocess.run(spy, capture_output=True, text=True, timeout=60, check=False)
        process.kill()
        process.wait(10)
        os.close(master)
        raise AssertionError(
            f"still running 10 s after the answer {answer!r}: {seen.decode(errors='replace')}\n"
            f"its threads:\n{stacks.stdout}{stacks.stderr}"
        )
    os.close(master)
    return process.wait(10), seen.decode(errors="replace")
