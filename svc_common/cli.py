"""The command line both services share: `python -m <service> --listen HOST:PORT`, settings from the environment."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar

from svc_common.grpc_server import ListenError
from svc_common.settings import SettingsError

S = TypeVar("S")


def run_service(
    name: str,
    description: str,
    default_listen: str,
    read_settings: Callable[[Mapping[str, str], str], S],
    serve: Callable[[S], Coroutine[Any, Any, None]],
    argv: list[str] | None = None,
) -> int:
    """Parse the arguments, read the settings (exit status 2 if they are wrong) and serve until signalled."""
    parser = argparse.ArgumentParser(prog=f"python -m {name}", description=description)
    parser.add_argument("--listen", default=default_listen, help=f"host:port to serve on (default {default_listen})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = read_settings(os.environ, args.listen)
    except SettingsError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(settings))
    except ListenError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    return 0
