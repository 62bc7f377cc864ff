"""`python -m booking_service --listen HOST:PORT` (env DATABASE_URL, REDIS_URL, JWT_SECRET)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from booking_service.server import serve
from booking_service.settings import DEFAULT_LISTEN, Settings
from svc_common.settings import SettingsError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m booking_service", description="Booking gRPC service")
    parser.add_argument("--listen", default=DEFAULT_LISTEN, help=f"host:port to serve on (default {DEFAULT_LISTEN})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = Settings.from_env(os.environ, listen=args.listen)
    except SettingsError as exc:
        print(f"booking_service: {exc}", file=sys.stderr)
        return 2
    asyncio.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
