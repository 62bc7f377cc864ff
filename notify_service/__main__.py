"""`python -m notify_service --listen HOST:PORT` (env REDIS_URL, JWT_SECRET)."""

from __future__ import annotations

import sys

from notify_service.server import serve
from notify_service.settings import DEFAULT_LISTEN, Settings
from svc_common.cli import run_service

if __name__ == "__main__":
    sys.exit(
        run_service(
            "notify_service",
            "Notify gRPC service: streams booking change events",
            DEFAULT_LISTEN,
            Settings.read,
            serve,
        )
    )
