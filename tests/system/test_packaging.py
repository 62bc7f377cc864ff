"""`pip install ./client .` from a clean checkout, into a fresh virtual environment: the client's build generates
the contract's code itself (booking_api has that one owner), and the installed packages import from outside the
source tree."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.helpers import token
from tests.support.servers import PROJECT, ServiceProcess


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
def test_pip_install_builds_the_generated_code_once_and_the_packages_import_anywhere(tmp_path: Path) -> None:
    source = _clean_checkout(tmp_path / "checkout")
    assert not (source / "client" / "booking_api" / "booking").exists()
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "venv")], check=True)
    python = tmp_path / "venv" / "bin" / "python"
    both = (source / "client", source)
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *map(str, both)],
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
        "from importlib.metadata import files as owned\n"
        "print(sum(str(f).startswith('booking_api/') for f in owned('slotledger-services')))\n"
        "from importlib.util import find_spec\n"
        "print(sum(str(f).startswith('devtools/') or '/dev/' in str(f) for f in owned('slotledger-services')),"
        " find_spec('devtools') is None)\n"
    )
    ran = subprocess.run([str(python), "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    where, migrations, typed, generated_by_the_services, dev_files, no_devtools = ran.stdout.split()
    assert "site-packages" in where and not where.startswith(str(PROJECT))
    assert int(migrations) == len(list((PROJECT / "booking_service" / "migrations").glob("*.sql")))
    assert typed == "True"
    assert generated_by_the_services == "0"  # booking_api is the client distribution's alone
    assert (dev_files, no_devtools) == ("0", "True")  # the development tools stay out of the wheel (and image)


SERVER_ONLY = {"asyncpg", "redis", "prometheus-client", "slotledger-services", "grpcio-reflection", "grpcio-status"}


@pytest.mark.timeout(900)
def test_the_client_package_installs_alone_and_calls_a_real_service(
    tmp_path: Path, booking_server: ServiceProcess
) -> None:
    """`pip install ./client` into a fresh virtual environment: the client, bookingctl, the generated code and
    the .proto files, and no server dependency; then bookingctl and booking_client against a real service."""
    source = _clean_checkout(tmp_path / "checkout")
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "venv")], check=True)
    venv = tmp_path / "venv" / "bin"
    installed = subprocess.run(
        [
            str(venv / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            str(source / "client"),
        ],
        capture_output=True,
        text=True,
        timeout=800,
    )
    assert installed.returncode == 0, installed.stderr[-4000:]
    listed = subprocess.run([str(venv / "python"), "-m", "pip", "list", "--format", "json"], capture_output=True,
                            text=True, check=True)  # fmt: skip
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert {"slotledger-client", "grpcio", "protobuf", "googleapis-common-protos", "rich"} <= names
    assert not names & SERVER_ONLY and not any(n.startswith("opentelemetry") for n in names), names

    admin = token("admin", "ops")
    made = subprocess.run(
        [str(venv / "bookingctl"), "--target", booking_server.address, "--token", admin, "-o", "json", "list"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert isinstance(json.loads(made.stdout), list)
    probe = (
        "import asyncio, booking_client, booking_api\n"
        "from importlib.resources import files\n"
        "print(files('booking_api').joinpath('protos/booking/v1/booking.proto').is_file())\n"
        "async def main():\n"
        f"    async with booking_client.BookingClient({booking_server.address!r}, token={admin!r}) as client:\n"
        "        print(len([b async for b in client.list_bookings(provider_id='nobody')]))\n"
        "asyncio.run(main())\n"
    )
    ran = subprocess.run([str(venv / "python"), "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == ["True", "0"]
