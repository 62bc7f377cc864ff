"""Mint a token: `python -m devtools.mint_token --sub alice --role user [--name Alice] [--ttl 3600]`.

The secret is read from env `JWT_SECRET`; unset, it is the one `make run` and `make token` use (LOCAL_SECRET,
the Makefile's default), so a token minted here works against `make run` as printed.
"""

from __future__ import annotations

import argparse
import os
import sys

from svc_common.auth import mint
from svc_common.principal import Role

LOCAL_SECRET = "local-dev-secret-change-me-0123456789abcdef"  # the Makefile's JWT_SECRET default (make run's)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.mint_token", description=__doc__)
    parser.add_argument("--sub", required=True, help="caller id (claim sub)")
    parser.add_argument("--role", required=True, choices=[r.value for r in Role])
    parser.add_argument("--name", default=None, help="display name (default: the sub)")
    parser.add_argument("--ttl", type=int, default=3600, help="seconds until expiry")
    args = parser.parse_args(argv)
    secret = os.environ.get("JWT_SECRET", "") or LOCAL_SECRET
    print(mint(secret, sub=args.sub, name=args.name or args.sub, role=Role(args.role), ttl_seconds=args.ttl))
    return 0


if __name__ == "__main__":
    sys.exit(main())
