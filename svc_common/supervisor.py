"""Background work that never dies silently, and a shutdown that always ends.

`Supervisor` runs each background task of a service (relay, waker, health watcher, purge, stream reader) in a
loop: an unexpected exception is logged once with its traceback, the owner is told (so health can say so), and
the task starts again after a backoff that grows while it keeps failing. `failing()` says whether a task failed
recently, which health reports.

`exit_after(seconds)` is the last resort of a shutdown: if the process has not exited by then, it logs and exits
at once, so whatever is stuck, a SIGTERMed service is gone within its grace period plus a few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from svc_common.backoff import Backoff

log = logging.getLogger(__name__)

EXIT_STUCK = 70  # EX_SOFTWARE: the shutdown did not finish in time
# How long a shutdown may take beyond its grace period (closing pools and clients) before exit_after ends it.
SHUTDOWN_MARGIN_SECONDS = 4.0


class Supervisor:
    def __init__(self, *, max_backoff_seconds: float = 5.0, stable_seconds: float = 10.0) -> None:
        self._max_backoff = max_backoff_seconds
        self._stable = stable_seconds  # a task counts as failing until it has run this long since its last failure
        self._failed_at: dict[str, float] = {}

    def start(
        self,
        name: str,
        run: Callable[[], Awaitable[None]],
        *,
        on_failure: Callable[[], Awaitable[None]] | None = None,
    ) -> asyncio.Task[None]:
        """Run `run()` until cancelled, restarting it whenever it fails or returns."""
        return asyncio.create_task(self._keep(name, run, on_failure), name=name)

    def failing(self, *names: str) -> bool:
        """Whether any of the tasks `names` failed in the last `stable_seconds`."""
        now = time.monotonic()
        return any(now - self._failed_at.get(name, -self._stable) < self._stable for name in names)

    async def _keep(
        self, name: str, run: Callable[[], Awaitable[None]], on_failure: Callable[[], Awaitable[None]] | None
    ) -> None:
        backoff = Backoff(0.1, self._max_backoff)
        while True:
            started = time.monotonic()
            try:
                await run()
                log.error("background task %s returned; restarting it", name)
            except Exception:
                log.exception("background task %s failed; restarting it", name)
            self._failed_at[name] = time.monotonic()
            if on_failure is not None:
                try:
                    await on_failure()
                except Exception:
                    log.exception("reporting the failure of %s failed", name)
            if time.monotonic() - started > self._stable:
                backoff.reset()
            await backoff.sleep()


def exit_after(seconds: float, what: str) -> threading.Timer:
    """Exit the process with status EXIT_STUCK if it is still running `seconds` from now (a daemon thread, so it
    works even when the event loop is blocked), logging what the loop's tasks were waiting for."""
    loop = asyncio.get_running_loop()

    def stuck() -> None:
        tasks = list(asyncio.all_tasks(loop))  # a snapshot for diagnosis; the loop is stuck anyway
        waits = "\n".join(f"{task.get_name()}: {' > '.join(_awaiting(task.get_coro()))}" for task in tasks)
        log.critical("%s did not finish within %.0fs; exiting now. Tasks:\n%s", what, seconds, waits)
        logging.shutdown()
        os._exit(EXIT_STUCK)

    timer = threading.Timer(seconds, stuck)
    timer.daemon = True
    timer.start()
    return timer


def log_tasks_on_sigusr1() -> None:
    """On SIGUSR1, log how many asyncio tasks run, by name (for operators and the soak test: a leak shows as a
    count that only grows)."""
    loop = asyncio.get_running_loop()

    def report() -> None:
        tasks = asyncio.all_tasks(loop)
        names = Counter(re.sub(r"\d+", "N", task.get_name()) for task in tasks)
        log.info("asyncio tasks: %d (%s)", len(tasks), ", ".join(f"{n} {name}" for name, n in names.most_common()))

    loop.add_signal_handler(signal.SIGUSR1, report)


def _awaiting(coro: Any) -> list[str]:
    """Where a coroutine waits, outermost first (following what each frame awaits)."""
    where = []
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            where.append(f"{frame.f_code.co_name} ({frame.f_code.co_filename}:{frame.f_lineno})")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return where


async def cancel_and_wait(task: asyncio.Task[None], *, repeat_seconds: float = 0.5) -> None:
    """Cancel a background task and wait until it has finished. The cancellation is repeated while the task runs
    on: a library that swallows one (seen: redis-py's pipeline when cancelled mid-write) must not keep a task,
    and so the shutdown, alive."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=repeat_seconds)
    with contextlib.suppress(asyncio.CancelledError):
        await task


def stop_event_on_signals() -> asyncio.Event:
    """An event set on SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop
