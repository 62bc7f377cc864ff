"""The command line both services share: `python -m <service> --listen HOST:PORT [--workers N]`, settings from
the environment."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar

from svc_common import logs
from svc_common.grpc_server import ListenError
from svc_common.metrics import MetricsServer, metrics_listen
from svc_common.settings import SettingsError
from svc_common.workers import WORKER_FLAG, Workers, check_free, default_workers, follow_parent

S = TypeVar("S")
MAX_WORKERS = 64


def run_service(
    name: str,
    description: str,
    default_listen: str,
    read_settings: Callable[[Mapping[str, str], str, bool], S],
    serve: Callable[[S], Coroutine[Any, Any, None]],
    argv: list[str] | None = None,
    *,
    metrics_default: str = "",
) -> int:
    """Parse the arguments, read the settings (exit status 2 if they are wrong) and serve until signalled: in
    this process with one worker, else as the supervisor of `--workers` processes (svc_common.workers)."""
    parser = argparse.ArgumentParser(prog=f"python -m {name}", description=description)
    parser.add_argument("--listen", default=default_listen, help=f"host:port to serve on (default {default_listen})")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes sharing the address (default: env WORKERS, else the number of CPUs this process may use)",
    )
    parser.add_argument(WORKER_FLAG, action="store_true", help=argparse.SUPPRESS)  # set by the supervisor
    args = parser.parse_args(argv)
    try:
        logs.configure(os.environ)
        workers = args.workers if args.workers is not None else _workers_from_env()
        if not 1 <= workers <= MAX_WORKERS:
            raise SettingsError(f"--workers must be from 1 to {MAX_WORKERS}, got {workers}")
        settings = read_settings(os.environ, args.listen, args.worker)
        address = metrics_listen(os.environ, metrics_default)
    except SettingsError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    # Workers write their metrics for the supervisor to serve; a lone process serves its own.
    metrics = MetricsServer(address) if address is not None and not args.worker else None
    try:
        if workers > 1 and not args.worker:
            check_free(args.listen)
            if metrics is not None:
                metrics.prepare_workers()
                metrics.start()
            return Workers(name, args.listen, workers, on_exit=metrics.worker_exited if metrics else None).run()
        if args.worker:
            follow_parent()
        if metrics is not None:
            metrics.start()
        asyncio.run(serve(settings))
    except ListenError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    finally:
        if metrics is not None:
            metrics.stop()
    return 0


def _workers_from_env() -> int:
    raw = os.environ.get("WORKERS", "").strip()
    if not raw:
        return default_workers()
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_WORKERS:
        raise SettingsError(f"WORKERS must be a whole number from 1 to {MAX_WORKERS}, got {raw!r}")
    return int(raw)
