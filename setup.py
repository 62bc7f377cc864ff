"""Builds the contract's Python code (protos/generate.sh) before setuptools collects the packages, so that
`pip install .` from a clean checkout installs a complete, importable package (everything else is in
pyproject.toml). The generator comes from the build requirements; if it cannot run, the build stops here with
a message that says why."""

import subprocess
import sys
from pathlib import Path

from setuptools import setup

GENERATE = Path(__file__).resolve().parent / "protos" / "generate.sh"

if GENERATE.exists():  # a checkout (an sdist carries the generated code instead)
    try:
        subprocess.run(["sh", str(GENERATE), sys.executable], check=True, stdout=subprocess.DEVNULL)
    except (OSError, subprocess.CalledProcessError) as exc:
        sys.exit(
            f"booking-backend: cannot generate the gRPC code from protos/ ({exc}); the build needs grpcio-tools "
            "and mypy-protobuf (the build requirements in pyproject.toml) and a POSIX sh"
        )

setup()
