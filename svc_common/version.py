"""What is deployed: the distribution's version, the git commit it was built from and the Python it runs on, for
`--version`, the start-up log line and the `build_info` metric.

The commit comes from BUILD_COMMIT (the image sets it from its build argument GIT_COMMIT), else from the checkout
the code runs from (its .git/HEAD, read once; no git command runs), else "unknown".
"""

from __future__ import annotations

import importlib.metadata
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import Gauge

DISTRIBUTION = "slotledger-services"
BUILD_INFO = Gauge(
    "build_info",
    "1, labelled with what runs: the service, its version, the git commit it was built from, the Python",
    ["service", "version", "commit", "python"],
    multiprocess_mode="max",
)
CHECKOUT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class BuildInfo:
    version: str
    commit: str
    python: str

    def __str__(self) -> str:
        return f"{self.version} (commit {self.commit}, Python {self.python})"


def _commit_of(checkout: Path) -> str | None:
    """The commit a git checkout's HEAD names (a branch's, loose or packed), or None."""
    git = checkout / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head[:12] or None
        ref = head.removeprefix("ref: ")
        loose = git / ref
        if loose.exists():
            return loose.read_text().strip()[:12]
        for line in (git / "packed-refs").read_text().splitlines():
            sha, _, name = line.partition(" ")
            if name == ref:
                return sha[:12]
    except OSError:
        return None
    return None


def build_info(environ: Mapping[str, str]) -> BuildInfo:
    """What runs, with BUILD_COMMIT read from `environ` (the process's, read by the command line)."""
    try:
        version = importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    commit = environ.get("BUILD_COMMIT") or _commit_of(CHECKOUT) or "unknown"
    return BuildInfo(version, commit, platform.python_version())


def record(service: str, info: BuildInfo) -> None:
    """Export `info` as the build_info metric."""
    BUILD_INFO.labels(service, info.version, info.commit, info.python).set(1)
