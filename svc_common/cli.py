"""The command line both services share: `python -m <service> --listen HOST:PORT [--workers N] [--check-config
[--probe]]`, settings from the environment (svc_common.settings).

A variable with the prefix of a setting the service reads, but not read (a misspelling), is reported: by
--check-config on stderr, and at start-up in the log. --probe connects to each dependency once.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, TypeVar

from svc_common import logs, version
from svc_common.errors import CannotStart
from svc_common.grpc_server import ServerConfig
from svc_common.metrics import MetricsServer
from svc_common.settings import Env, SettingsError
from svc_common.workers import WORKER_FLAG, Workers, check_free, default_workers, follow_parent

MAX_WORKERS = 64
# The garbage collector's thresholds while serving: the youngest generation collected every 50,000 allocations
# (Python's default: 700), the older ones as rarely. At the benchmark's steady fan-out (a few futures and tasks
# allocated per delivery), this took 3-6% off notify's CPU per delivery (docs/benchmarks.md).
GC_THRESHOLDS = (50_000, 20, 100)
log = logging.getLogger(__name__)


def collect_less() -> None:
    """Before serving: leave what start-up made (modules, descriptors, settings) out of every collection from now
    on (gc.freeze), and collect less often (GC_THRESHOLDS)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class ServiceSettings(Protocol):
    """What the command line needs of a service's settings: its server's (the metrics address), and a probe of
    each dependency (for --probe): a name, and a coroutine that fails if the dependency does not answer."""

    @property
    def server(self) -> ServerConfig: ...

    def probes(self) -> dict[str, Callable[[], Coroutine[Any, Any, str]]]: ...


S = TypeVar("S", bound=ServiceSettings)


def run_service(
    name: str,
    description: str,
    default_listen: str,
    read_settings: Callable[..., S],
    serve: Callable[[S], Coroutine[Any, Any, None]],
    argv: list[str] | None = None,
) -> int:
    """Parse the arguments, read the settings (every problem on stderr, exit status 2) and serve until
    signalled: in this process with one worker, else as the supervisor of `--workers` processes
    (svc_common.workers). With --check-config, print the effective settings and exit."""
    parser = argparse.ArgumentParser(prog=f"python -m {name}", description=description)
    parser.add_argument("--listen", default=default_listen, help=f"host:port to serve on (default {default_listen})")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes sharing the address (default: env WORKERS, else the number of CPUs this process may use)",
    )
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="validate the settings, print the effective ones (secrets redacted) and exit: 0 if usable, else 2",
    )
    parser.add_argument(
        "--probe",
        action="store_true",
        help="with --check-config: also connect to each dependency once (exit 1 if one does not answer)",
    )
    parser.add_argument("--version", action="store_true", help="print the version, commit and Python, and exit")
    parser.add_argument(WORKER_FLAG, action="store_true", help=argparse.SUPPRESS)  # set by the supervisor
    args = parser.parse_args(argv)
    info = version.build_info(os.environ)
    if args.version:
        print(f"{name} {info}")
        return 0
    if args.probe and not args.check_config:
        parser.error("--probe goes with --check-config")
    env = Env(os.environ)
    config = read_config(env, read_settings, args.listen, args.worker, args.workers)
    try:
        env.check()
    except SettingsError as exc:
        for problem in exc.problems:
            print(f"{name}: {problem}", file=sys.stderr)
        return 2
    unknown = env.unknown()
    if args.check_config:
        warned = f", with {len(unknown)} warning{'s' if len(unknown) > 1 else ''}" if unknown else ""
        print(f"# {name}: the settings are usable{warned}\n--listen={args.listen}\n{env.report()}")
        for variable in unknown:
            print(f"{name}: warning: {variable}", file=sys.stderr)
        return asyncio.run(probe(name, config[0])) if args.probe else 0
    settings, log_config, workers = config
    address = settings.server.metrics_listen
    logs.configure(log_config, service=name)
    if not args.worker:
        log.info("%s %s starting on %s, %d worker%s", name, info, args.listen, workers, "s" if workers > 1 else "")
    for variable in unknown if not args.worker else ():
        log.warning("%s (python -m %s --check-config shows what is read)", variable, name)
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
        version.record(name, info)
        if metrics is not None:
            metrics.start()
        collect_less()
        if settings.server.event_loop == "uvloop":
            import uvloop

            uvloop.run(serve(settings))
        else:
            asyncio.run(serve(settings))
    except CannotStart as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    finally:
        if metrics is not None:
            metrics.stop()
    return 0


async def probe(name: str, settings: ServiceSettings, seconds: float = 10.0) -> int:
    """Connect to each dependency once; a line each; 0 if all answered, else 1."""
    failed = 0
    for dependency, check in settings.probes().items():
        try:
            said = await asyncio.wait_for(check(), seconds)
        except Exception as exc:  # noqa: BLE001 - whatever stops a dependency from answering is the answer
            failed += 1
            print(f"# probe: {dependency}: FAILED: {type(exc).__name__}: {exc or 'no answer'}"[:500])
        else:
            print(f"# probe: {dependency}: ok ({said})")
    print(f"# {name}: {'every dependency answered' if not failed else f'{failed} did not answer'}")
    return 1 if failed else 0


def read_config(
    env: Env,
    read_settings: Callable[..., S],
    listen: str,
    worker: bool,
    workers: int | None,
) -> tuple[S, logs.LogConfig, int]:
    """Every setting a service starts with, read through `env` (problems are recorded there): the service's
    own (`read_settings(env, listen=..., reuse_port=...)`, METRICS_LISTEN among them), logging and WORKERS
    (unless --workers gave it)."""
    log_config = logs.LogConfig.read(env)
    from_env = env.integer("WORKERS", default_workers(), least=1, most=MAX_WORKERS, shown_default="CPUs")
    if workers is None:
        workers = from_env
    elif not 1 <= workers <= MAX_WORKERS:
        env.problem(f"--workers must be from 1 to {MAX_WORKERS}, got {workers}")
    settings = read_settings(env, listen=listen, reuse_port=worker)
    return settings, log_config, workers
