"""Prometheus metrics over HTTP at /metrics on METRICS_LISTEN (empty: none), for the whole instance.

A lone process serves its own metrics. With workers, the supervisor makes a fresh directory and hands it to
them as PROMETHEUS_MULTIPROC_DIR (prometheus_client's multiprocess mode: each worker writes its metrics to
files there, set before the worker's Python starts), serves /metrics summed over every worker's files, forgets
the live gauges of a worker that exits, and removes the directory when it stops. So a scrape sees the instance,
not whichever worker answered.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from svc_common.errors import ListenError

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"

# The buckets of the hops a change takes from its write to its subscribers (booking_event_hop_seconds,
# notify_event_hop_seconds): fine below 10 ms, where a healthy hop lies, so quantiles estimated from them
# (histogram_quantile) tell hops of a few milliseconds apart.
HOP_BUCKETS = (
    0.0005, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


class MetricsServer:
    """/metrics over HTTP in a background thread (prometheus_client's server)."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address
        self._server: Any = None
        self._directory: str | None = None

    def prepare_workers(self) -> None:
        """Before workers start: the directory they write their metrics to (inherited through the environment)."""
        self._directory = tempfile.mkdtemp(prefix="service-metrics-")
        os.environ[MULTIPROCESS_DIR] = self._directory

    def start(self) -> None:
        from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = REGISTRY
        if self._directory is not None:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=self._directory)  # type: ignore[no-untyped-call]
        host, port = self.address
        try:
            self._server, _thread = start_http_server(port, addr=host, registry=registry)
        except OSError as exc:
            raise ListenError(f"cannot serve metrics on {host}:{port}: {exc.strerror}") from exc

    def worker_exited(self, pid: int) -> None:
        """A worker is gone: its live gauges no longer count."""
        if self._directory is not None:
            from prometheus_client.multiprocess import mark_process_dead

            mark_process_dead(pid, self._directory)  # type: ignore[no-untyped-call]

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
