"""`python -m booking_service --listen HOST:PORT` (env DATABASE_URL, REDIS_URL, JWT_SECRET)."""

from __future__ import annotations

import sys

from booking_service.server import serve
from booking_service.settings import DEFAULT_LISTEN, Settings
from svc_common.cli import run_service

if __name__ == "__main__":
    sys.exit(
        run_service(
            "booking_service",
            "Booking gRPC service",
            DEFAULT_LISTEN,
            Settings.read,
            serve,
        )
    )
