"""`pip install .` from a clean checkout, into a fresh virtual environment: the build generates the contract's
code itself, and the installed package imports from outside the source tree."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.servers import PROJECT


def _clean_checkout(into: Path) -> Path:
    """The project's files as a fresh clone has them (tracked or new, never ignored, so no generated code)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=PROJECT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (entry.decode() for entry in listed)):
        source = PROJECT / name
        if source.is_file():
            target = into / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return into


@pytest.mark.timeout(900)
def test_pip_install_builds_the_generated_code_and_the_package_imports_anywhere(tmp_path: Path) -> None:
    source = _clean_checkout(tmp_path / "checkout")
    assert not (source / "client" / "booking_api" / "booking").exists()
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "venv")], check=True)
    python = tmp_path / "venv" / "bin" / "python"
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(source)],
        capture_output=True,
        text=True,
        timeout=800,
    )
    assert installed.returncode == 0, installed.stderr[-4000:]
    probe = (
        "import booking_service.server, notify_service.server, svc_common.grpc_server\n"
        "from booking_api.booking.v1 import booking_pb2_grpc, events_pb2\n"
        "from booking_api.notify.v1 import notify_pb2\n"
        "from importlib.resources import files\n"
        "import booking_service, booking_api\n"
        "print(booking_service.__file__)\n"
        "print(len(list(files('booking_service').joinpath('migrations').iterdir())))\n"
        "print(files('booking_api').joinpath('booking/v1/booking_pb2.pyi').is_file())\n"
    )
    ran = subprocess.run([str(python), "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    where, migrations, typed = ran.stdout.split()
    assert "site-packages" in where and not where.startswith(str(PROJECT))
    assert int(migrations) == len(list((PROJECT / "booking_service" / "migrations").glob("*.sql")))
    assert typed == "True"
