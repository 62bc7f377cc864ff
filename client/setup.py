"""Builds the contract's Python code (../protos/generate.sh) into booking_api/ before setuptools collects the
packages, as the project's own setup.py does for the services (everything else is in pyproject.toml)."""

import subprocess
import sys
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent
GENERATE = HERE.parent / "protos" / "generate.sh"

if GENERATE.exists():  # a checkout (an sdist carries the generated code instead)
    try:
        subprocess.run(["sh", str(GENERATE), sys.executable, str(HERE)], check=True, stdout=subprocess.DEVNULL)
    except (OSError, subprocess.CalledProcessError) as exc:
        sys.exit(f"slotledger-client: cannot generate the gRPC code from ../protos ({exc})")

setup()
