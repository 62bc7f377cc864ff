"""bookingctl as an operator runs it: a subprocess against real services; tables, JSON and YAML; errors on one
or two lines with exit status 1; the purge confirmation answered at a real terminal (a pseudo-terminal)."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import select
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
import yaml

from tests.support.events import EventSystem, eventually
from tests.support.helpers import JWT_SECRET, fresh_slot, token, uid
from tests.support.servers import PROJECT, ServiceProcess

pytestmark = pytest.mark.timeout(180)


class Ctl:
    def __init__(self, booking: ServiceProcess, notify: ServiceProcess) -> None:
        self.notify = notify
        self.base = [
            sys.executable,
            "-m",
            "booking_client.cli",
            "--target",
            booking.address,
            "--notify-target",
            notify.address,
        ]
        self.env = {**os.environ, "BOOKING_TOKEN": token("admin", "ops"), "JWT_SECRET": JWT_SECRET}

    def __call__(self, *args: str, token: str | None = None, stdin: str = "") -> subprocess.CompletedProcess[str]:
        env = self.env if token is None else {**self.env, "BOOKING_TOKEN": token}
        return subprocess.run(
            [*self.base, *args], env=env, cwd=PROJECT, capture_output=True, text=True, input=stdin, timeout=60
        )

    def json(self, *args: str, token: str | None = None) -> Any:
        done = self(*args, token=token)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


@pytest.fixture
def ctl(system: EventSystem) -> Ctl:
    return Ctl(system.booking(), system.notify())


def iso(value: datetime) -> str:
    return value.isoformat()


def test_create_get_list_delete_restore_audit_hard_delete_in_json_yaml_and_tables(ctl: Ctl) -> None:
    start, end = fresh_slot()
    provider, customer = uid("prov"), uid("cust")
    (made,) = ctl.json(
        "create",
        "--service",
        "haircut",
        "--provider",
        provider,
        "--customer",
        customer,
        "--start",
        iso(start),
        "--end",
        iso(end),
        "--notes",
        "window seat",
    )
    assert made["provider_id"] == provider and made["etag"] == '"1"'
    assert ctl.json("get", made["id"]) == [made]
    assert [b["id"] for b in ctl.json("list", "--provider", provider)] == [made["id"]]
    listed = yaml.safe_load(ctl("-o", "yaml", "list", "--provider", provider).stdout)
    assert listed == [made]
    table = ctl("-o", "table", "list", "--provider", provider).stdout
    assert "ID" in table and "PROVIDER" in table and made["id"][:8] in table

    (deleted,) = ctl.json("delete", made["id"], "--reason", "no longer needed", "--etag", made["etag"])
    assert deleted["deletion_reason"] == "no longer needed"
    assert [b["id"] for b in ctl.json("list-deleted", "--customer", customer)] == [made["id"]]
    (restored,) = ctl.json("restore", made["id"])
    assert "delete_time" not in restored or not restored["delete_time"]
    ctl.json("delete", made["id"])
    assert ctl.json("hard-delete", made["id"]) == {"booking_id": made["id"]}
    actions = [e["action"] for e in ctl.json("audit", made["id"])]
    assert actions == ["AUDIT_ACTION_" + a for a in ("CREATED", "DELETED", "RESTORED", "DELETED", "HARD_DELETED")]
    assert "HARD_DELETED" in ctl("-o", "table", "audit", made["id"]).stdout


def test_a_purge_preview_with_nothing_to_purge_shows_zero_rather_than_nothing(ctl: Ctl) -> None:
    long_ago = iso(datetime(2000, 1, 1, tzinfo=UTC))
    assert ctl.json("purge", "--before", long_ago) == {"purge_count": 0, "purge_sample": [], "force": False}


def test_errors_print_status_reason_and_fields_and_exit_1_and_usage_problems_exit_2(ctl: Ctl) -> None:
    missing = ctl("get", str(uuid.uuid4()))
    assert missing.returncode == 1 and missing.stdout == ""
    assert missing.stderr.startswith("error: NOT_FOUND (BOOKING_NOT_FOUND): ")
    start, end = fresh_slot()
    backwards = ctl(
        "create", "--service", "haircut", "--provider", "p", "--customer", "c", "--start", iso(end), "--end", iso(start)
    )
    assert backwards.returncode == 1
    first, second = backwards.stderr.strip().splitlines()
    assert first.startswith("error: INVALID_ARGUMENT") and second.startswith("  fields: ") and "end_time" in second
    denied = ctl("hard-delete", str(uuid.uuid4()), token=token("user", "alice"))
    assert denied.returncode == 1 and "PERMISSION_DENIED (ADMIN_ONLY)" in denied.stderr
    assert ctl("list", token="").returncode == 2
    assert (
        ctl("create", "--service", "haircut", "--provider", "p", "--start", "yesterday", "--end", "x").returncode == 2
    )
    forged = ctl("list", token="not-a-token")
    assert forged.returncode == 1 and "UNAUTHENTICATED" in forged.stderr and "Traceback" not in forged.stderr


def test_token_makes_a_working_token_and_health_reports_both_services(ctl: Ctl) -> None:
    minted = ctl("token", "--sub", "carol", "--role", "provider")
    assert minted.returncode == 0
    claims = jwt.decode(minted.stdout.strip(), JWT_SECRET, algorithms=["HS256"])
    assert (claims["sub"], claims["role"]) == ("carol", "provider")
    assert ctl.json("list", token=minted.stdout.strip()) == []
    rows = ctl.json("health")
    assert [(r["service"], r["status"]) for r in rows] == [("booking", "SERVING"), ("notify", "SERVING")]


async def test_watch_prints_one_line_per_event(ctl: Ctl) -> None:
    watcher = await asyncio.create_subprocess_exec(
        *ctl.base,
        "-o",
        "table",
        "watch",
        "--limit",
        "2",
        env=ctl.env,
        cwd=PROJECT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    # Subscribed (its subscription is registered before the line is logged): the first change comes after it.
    await eventually(lambda: "subscribed" in ctl.notify.log(), lambda: "bookingctl watch did not subscribe", 60)
    made = await asyncio.to_thread(create, ctl, "p")
    await asyncio.to_thread(ctl.json, "delete", made["id"])
    stdout, stderr = await asyncio.wait_for(watcher.communicate(), 30)
    assert watcher.returncode == 0, stderr
    lines = stdout.decode().splitlines()
    assert len(lines) == 2
    assert "CREATED" in lines[0] and "DELETED" in lines[1] and all(made["id"] in line for line in lines)


def create(ctl: Ctl, provider: str, *more: str) -> dict[str, Any]:
    """A booking made with `bookingctl create` in a slot of its own, as JSON."""
    start, end = fresh_slot()
    (made,) = ctl.json("create", "--service", "haircut", "--provider", provider, "--customer", "c",
                       "--start", iso(start), "--end", iso(end), *more)  # fmt: skip
    made_booking: dict[str, Any] = made
    return made_booking


def soft_deleted(ctl: Ctl, count: int) -> list[str]:
    ids = []
    for _ in range(count):
        made = create(ctl, uid("p"))
        ctl.json("delete", made["id"])
        ids.append(made["id"])
    return ids


def at_terminal(command: list[str], env: dict[str, str], answer: str) -> tuple[int, str]:
    """Run `command` with a pseudo-terminal as its stdin and stdout; answer its question; return its exit status
    and what it printed."""
    master, slave = pty.openpty()
    process = subprocess.Popen(command, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=PROJECT)
    os.close(slave)
    seen, answered = b"", False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the process closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        if not answered and b"[y/N]" in seen:
            os.write(master, answer.encode() + b"\n")
            answered = True
        if process.poll() is not None and not ready:
            break
    os.close(master)
    return process.wait(10), seen.decode(errors="replace")


def test_purge_asks_at_a_terminal_and_purges_only_when_confirmed(ctl: Ctl) -> None:
    ids = soft_deleted(ctl, 3)
    before = iso(datetime.now(UTC) + timedelta(minutes=1))
    command = [*ctl.base, "purge", "--before", before, "--force"]
    status, screen = at_terminal(command, ctl.env, "n")
    assert status == 2 and "not purged" in screen and "Permanently delete 3 bookings" in screen
    assert ctl.json("purge", "--before", before)["purge_count"] == 3
    # Not at a terminal and without --yes: refused, nothing purged.
    piped = ctl("purge", "--before", before, "--force")
    assert piped.returncode == 2 and "--yes" in piped.stderr
    status, screen = at_terminal(command, ctl.env, "y")
    assert status == 0, screen
    assert "PURGED" in screen and "3" in screen
    assert ctl.json("purge", "--before", before)["purge_count"] == 0
    more = soft_deleted(ctl, 1)
    assert ctl.json("purge", "--before", iso(datetime.now(UTC) + timedelta(minutes=1)), "--force", "--yes") == {
        "purge_count": 1,
        "purge_sample": more,
        "force": True,
    }
    assert all(ctl("get", i).returncode == 1 for i in ids)
