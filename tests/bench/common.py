"""What both benchmarks share: where results go, progress lines, a throwaway working directory, and open-loop
load (one call every 1/rate seconds, whatever the calls before it are doing: a slow or stuck call never holds
up the next, as real clients would not wait for each other)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import asyncpg

from tests.support.servers import PROJECT

OUT_DIR = PROJECT / ".local" / "bench"  # JSON results and charts


def write_result(name: str, result: dict[str, Any]) -> None:
    """A benchmark's result as JSON in OUT_DIR."""
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / name).write_text(json.dumps(result, indent=2))


async def create_databases(server_url: str, *names: str) -> None:
    """Databases `names` on the benchmark's own PostgreSQL server (fresh for each run)."""
    conn = await asyncpg.connect(server_url)
    try:
        for name in names:
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


def progress(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def run_in_workdir(
    run: Callable[[argparse.Namespace, Path], Coroutine[Any, Any, dict[str, Any]]], args: argparse.Namespace
) -> dict[str, Any]:
    """`run(args, workdir)` in a fresh directory the postgres user can traverse, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="booking-bench-") as tmp:
        workdir = Path(tmp)
        workdir.chmod(0o755)
        return asyncio.run(run(args, workdir))


async def open_loop(rate: float, seconds: float, one: Callable[[int], Coroutine[Any, Any, None]]) -> int:
    """Run `one(k)` for k = 0, 1, ... at `rate` per second for `seconds`; returns how many were started, once
    all have finished."""
    tasks = []
    start = time.perf_counter()
    for k in range(int(rate * seconds)):
        delay = start + k / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(k)))
    await asyncio.gather(*tasks)
    return len(tasks)
