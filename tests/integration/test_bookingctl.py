"""bookingctl as an operator runs it: a subprocess against real services; tables, JSON and YAML; errors on one
or two lines with exit status 1; flags, contexts, completion (its questions at a terminal: test_bookingctl_prompt)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import pytest
import yaml

from tests.support.bookingctl import Ctl, as_at_a_terminal, create, iso
from tests.support.events import eventually
from tests.support.helpers import JWT_SECRET, fresh_slot, token, uid
from tests.support.servers import PROJECT

pytestmark = pytest.mark.timeout(180)


def test_create_get_list_delete_restore_audit_hard_delete_in_json_yaml_and_tables(ctl: Ctl) -> None:
    start, end = fresh_slot()
    provider, customer = uid("prov"), uid("cust")
    made = ctl.json(
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
    assert ctl.json("get", made["id"]) == made
    assert [b["id"] for b in ctl.json("list", "--provider", provider)] == [made["id"]]
    listed = yaml.safe_load(ctl("-o", "yaml", "list", "--provider", provider).stdout)
    assert listed == [made]
    table = ctl("-o", "table", "list", "--provider", provider).stdout
    assert "ID" in table and "PROVIDER" in table and made["id"][:8] in table

    deleted = ctl.json("delete", made["id"], "--reason", "no longer needed", "--etag", made["etag"])
    assert deleted["deletion_reason"] == "no longer needed"
    assert [b["id"] for b in ctl.json("list-deleted", "--customer", customer)] == [made["id"]]
    restored = ctl.json("restore", made["id"])
    assert "delete_time" not in restored or not restored["delete_time"]
    ctl.json("delete", made["id"])
    assert ctl.json("hard-delete", made["id"], "--yes") == {"booking_id": made["id"]}
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
    # Said once, in the command line's words (its flags, not the proto's fields), with the call's request id.
    assert backwards.returncode == 1
    assert backwards.stderr.splitlines()[0] == "error: INVALID_ARGUMENT: --end: must be after --start"
    assert backwards.stderr.splitlines()[1].startswith("  request id: ") and len(backwards.stderr.splitlines()) == 2
    no_customer = ctl("create", "--service", "haircut", "--provider", "p", "--start", iso(start), "--end", iso(end))
    assert no_customer.returncode == 1 and "--customer: required" in no_customer.stderr, no_customer.stderr
    denied = ctl("hard-delete", str(uuid.uuid4()), "--yes", token=token("user", "alice"))
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


def test_global_flags_go_anywhere_and_a_mistyped_flag_or_command_gets_a_suggestion(ctl: Ctl) -> None:
    made = create(ctl, uid("p"))
    after = ctl("list", "-o", "json", "--provider", made["provider_id"], "--timeout", "5")
    assert after.returncode == 0 and json.loads(after.stdout)[0]["id"] == made["id"], after.stderr
    typo = ctl("list", "--provder", "x")
    assert typo.returncode == 2 and "did you mean --provider?" in typo.stderr
    assert "did you mean list?" in ctl("lsit").stderr
    version = ctl("--version")
    assert version.returncode == 0 and version.stdout.startswith("bookingctl 0.")


def test_tables_fit_80_columns_without_cutting_and_wide_shows_every_column(ctl: Ctl) -> None:
    provider = uid("p")[:6]  # names as short as real ones: at 80 columns, long names fold
    made = [create(ctl, provider) for _ in range(2)]
    ctl.json("delete", made[1]["id"])
    ctl.env["COLUMNS"] = "80"
    for command in (["list", "--provider", provider, "--show-deleted"], ["get", made[0]["id"], made[1]["id"]]):
        shown = ctl("-o", "table", *command)
        lines = shown.stdout.splitlines()
        assert shown.returncode == 0 and max(len(line) for line in lines) <= 80, shown.stdout
        for booking in made:
            row = next(line for line in lines if booking["id"] in line)  # whole ids, one a row
            start = booking["start_time"]
            assert f"{start[:10]} {start[11:16]}" in row and provider in row, shown.stdout
        assert "active" in shown.stdout and "deleted" in shown.stdout
    wide = ctl("-o", "wide", "list", "--provider", provider)
    assert all(h in wide.stdout for h in ("SERVICE", "END", "ETAG", "NOTES")) and made[0]["etag"] in wide.stdout
    preview = ctl("-o", "table", "purge", "--before", iso(datetime.now(UTC) + timedelta(minutes=1)))
    assert max(len(line) for line in preview.stdout.splitlines()) <= 80, preview.stdout
    assert made[1]["id"] in preview.stdout and "would purge" in preview.stdout


def test_get_takes_several_ids_and_list_a_limit(ctl: Ctl) -> None:
    provider = uid("p")
    made = [create(ctl, provider) for _ in range(3)]
    got = ctl.json("get", made[2]["id"], made[0]["id"])
    assert [b["id"] for b in got] == [made[2]["id"], made[0]["id"]]
    missing = str(uuid.uuid4())
    partly = ctl("get", made[1]["id"], missing)
    assert partly.returncode == 1 and json.loads(partly.stdout)[0]["id"] == made[1]["id"]
    assert "NOT_FOUND" in partly.stderr and "request id" in partly.stderr
    assert len(ctl.json("list", "--provider", provider, "--limit", "2")) == 2


def test_reschedule_list_a_window_and_free_time_with_errors_in_flags_words(ctl: Ctl) -> None:
    provider = uid("p")
    start, end = fresh_slot(hours=4)
    first = ctl.json("create", "--service", "s", "--provider", provider, "--customer", "c",
                     "--start", iso(start), "--end", iso(start + timedelta(hours=1)))  # fmt: skip
    second = ctl.json("create", "--service", "s", "--provider", provider, "--customer", "c",
                      "--start", iso(start + timedelta(hours=2)), "--end", iso(start + timedelta(hours=3)))  # fmt: skip
    moved = ctl.json("reschedule", first["id"], "--start", iso(start + timedelta(hours=3)), "--end", iso(end),
                     "--etag", first["etag"])  # fmt: skip
    assert moved["id"] == first["id"] and moved["start_time"] == iso(start + timedelta(hours=3)).replace("+00:00", "Z")
    taken = ctl("reschedule", first["id"], "--start", iso(start + timedelta(hours=2)), "--end", iso(end))
    assert taken.returncode == 1 and "SLOT_UNAVAILABLE" in taken.stderr
    backwards = ctl("reschedule", first["id"], "--start", iso(end), "--end", iso(start))
    assert backwards.returncode == 1 and "--end: must be after --start" in backwards.stderr, backwards.stderr
    window = ["--from", iso(start + timedelta(hours=2, minutes=30)), "--to", iso(end)]
    assert [b["id"] for b in ctl.json("list", "--provider", provider, *window)] == [second["id"], first["id"]]
    free = ctl.json("free", "--provider", provider, "--from", iso(start), "--to", iso(end), "--duration", "1h")
    assert free == [{"start_time": iso(start).replace("+00:00", "Z"),
                     "end_time": iso(start + timedelta(hours=2)).replace("+00:00", "Z")}]  # fmt: skip
    table = ctl("-o", "table", "free", "--provider", provider, "--from", iso(start), "--to", iso(end),
                "--duration", "30m")  # fmt: skip
    assert table.returncode == 0 and "2:00:00" in table.stdout, table.stdout
    for bad in (["--duration", "soon"], ["--duration", "0s"]):
        refused = ctl("free", "--provider", provider, "--from", iso(start), "--to", iso(end), *bad)
        assert refused.returncode in (1, 2) and "--duration" in refused.stderr, refused.stderr
    half = ctl("list", "--from", iso(start))
    assert half.returncode == 2 and "--from and --to go together" in half.stderr


def test_verbose_shows_each_call_with_its_request_id(ctl: Ctl) -> None:
    shown = ctl("-v", "list", "--provider", uid("p"))
    assert shown.returncode == 0
    assert "> booking.v1.BookingService/ListBookings  request id " in shown.stderr
    assert "< booking.v1.BookingService/ListBookings  OK in " in shown.stderr


def test_watch_says_on_stderr_that_it_connects_and_retries(ctl: Ctl, tmp_path: Path) -> None:
    said = tmp_path / "stderr"
    with socket_nobody_answers() as address, said.open("w") as stderr:
        watcher = subprocess.Popen(
            [*ctl.base, "--notify-target", address, "watch"],
            env=ctl.env, cwd=PROJECT, stdout=subprocess.DEVNULL, stderr=stderr, text=True,
            preexec_fn=as_at_a_terminal,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while said.read_text().count("retrying in") < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
            watcher.send_signal(signal.SIGINT)
            assert watcher.wait(timeout=30) == 130
        finally:
            if watcher.poll() is None:
                watcher.kill()
                watcher.wait(10)
    text = said.read_text()
    assert f"watch: connecting to {address}" in text and "UNAVAILABLE" in text and text.count("retrying in") >= 2, text


@contextlib.contextmanager
def socket_nobody_answers() -> Iterator[str]:
    """An address where nothing listens (a port bound, never listened on)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def test_contexts_save_target_and_token_source_and_flags_and_env_win(ctl: Ctl, tmp_path: Path) -> None:
    made = create(ctl, uid("p"))
    env = {k: v for k, v in ctl.env.items() if k not in ("BOOKING_TOKEN",)}
    env["BOOKINGCTL_CONFIG"] = str(tmp_path / "config.yaml")
    token_file = tmp_path / "token"
    token_file.write_text(token("admin", "ops") + "\n")
    bare = [sys.executable, "-m", "booking_client.cli"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*bare, *args], env=env, cwd=PROJECT, capture_output=True, text=True, timeout=60)

    target = ctl.base[ctl.base.index("--target") + 1]
    notify = ctl.base[ctl.base.index("--notify-target") + 1]
    saved = run("config", "set-context", "dev", "--target", target, "--notify-target", notify,
                "--token-file", str(token_file))  # fmt: skip
    assert saved.returncode == 0, saved.stderr
    assert (tmp_path / "config.yaml").stat().st_mode & 0o777 == 0o600
    assert run("config", "current-context").stdout.strip() == "dev"
    assert json.loads(run("-o", "json", "get", made["id"]).stdout)["id"] == made["id"]  # all from the context
    run("config", "set-context", "elsewhere", "--target", "127.0.0.1:1", "--token-command", "echo forged")
    assert run("config", "use-context", "elsewhere").returncode == 0
    assert "*" in run("config", "get-contexts").stdout.splitlines()[1]
    assert run("--context", "dev", "-o", "json", "get", made["id"]).returncode == 0  # --context for one call
    assert run("--target", target, "get", made["id"]).stdout == ""  # the flag wins; the context's token is forged
    env["BOOKING_TARGET"] = target
    env["BOOKING_TOKEN"] = token("admin", "ops")
    assert run("-o", "json", "get", made["id"]).returncode == 0  # the environment wins over the current context
    unknown = run("--context", "dve", "get", made["id"])
    assert unknown.returncode == 2 and "no context 'dve'" in unknown.stderr and "did you mean dev?" in unknown.stderr


def test_bash_completion_completes_commands_and_flags(tmp_path: Path) -> None:
    script = subprocess.run(
        [sys.executable, "-m", "booking_client.cli", "completion", "bash"], capture_output=True, text=True, timeout=60
    )
    assert script.returncode == 0
    (tmp_path / "completion.bash").write_text(script.stdout)
    probe = f"""
source {tmp_path / "completion.bash"}
complete -p bookingctl >/dev/null || exit 3
words() {{ COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMP_LINE="$*"; COMP_POINT=${{#COMP_LINE}};
  $(complete -p bookingctl | sed -E 's/.*-F ([^ ]+).*/\\1/') bookingctl "${{COMP_WORDS[-1]}}" "${{COMP_WORDS[-2]}}";
  echo "${{COMPREPLY[*]}}"; }}
words bookingctl li
words bookingctl list --prov
"""
    done = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    commands, flags = done.stdout.splitlines()[-2:]
    assert set(commands.split()) == {"list", "list-deleted"} and "--provider" in flags.split(), done.stdout
    zsh = subprocess.run(
        [sys.executable, "-m", "booking_client.cli", "completion", "zsh"], capture_output=True, text=True, timeout=60
    )
    assert zsh.returncode == 0 and "#compdef bookingctl" in zsh.stdout and "list-deleted" in zsh.stdout


def test_schedule_set_from_the_shape_get_prints_and_free_lists_slot_starts(ctl: Ctl, tmp_path: Path) -> None:
    provider = uid("prov")
    missing = ctl("schedule", "get", provider)
    assert missing.returncode == 1 and "NO_SCHEDULE" in missing.stderr, missing.stderr
    (tmp_path / "schedule.yaml").write_text(
        f"provider_id: {provider}\n"
        "time_zone: America/New_York\n"
        "weekly_hours:\n"
        "- {day: MONDAY, start: {hours: 9}, end: {hours: 12}}\n"
        "buffer_after: 900s\n"
    )
    made = ctl.json("-o", "json", "schedule", "set", str(tmp_path / "schedule.yaml"))
    assert made["time_zone"] == "America/New_York" and made["buffer_after"] == "900s" and made["etag"] == '"1"'
    shown = ctl("-o", "yaml", "schedule", "get", provider)
    assert shown.returncode == 0, shown.stderr
    (tmp_path / "again.yaml").write_text(shown.stdout.replace("900s", "600s"))  # get's shape, with its etag
    assert ctl.json("-o", "json", "schedule", "set", str(tmp_path / "again.yaml"))["buffer_after"] == "600s"
    stale = ctl("schedule", "set", str(tmp_path / "again.yaml"))  # the etag it carries is old now
    assert stale.returncode == 1 and "ETAG_MISMATCH" in stale.stderr, stale.stderr
    table = ctl("-o", "wide", "schedule", "get", provider)
    assert "Mon 09:00-12:00" in table.stdout and "America/New_York" in table.stdout, table.stdout
    # A Monday far ahead, in New York: 09:00-12:00 local is 14:00-17:00 UTC in winter.
    monday = "2031-01-13"
    starts = ctl.json("-o", "json", "free", "--provider", provider, "--from", f"{monday}T00:00:00Z",
                      "--to", f"{monday}T23:59:00Z", "--duration", "1h", "--slots")  # fmt: skip
    assert starts == [f"{monday}T14:00:00Z", f"{monday}T15:00:00Z", f"{monday}T16:00:00Z"]
    stepped = ctl.json("-o", "json", "free", "--provider", provider, "--from", f"{monday}T00:00:00Z",
                       "--to", f"{monday}T23:59:00Z", "--duration", "1h", "--slots", "--step", "30m")  # fmt: skip
    assert len(stepped) == 5 and stepped[1] == f"{monday}T14:30:00Z"
    local = ctl("-o", "wide", "free", "--provider", provider, "--from", f"{monday}T00:00:00Z",
                "--to", f"{monday}T23:59:00Z", "--duration", "1h", "--slots")  # fmt: skip
    assert "2031-01-13T09:00:00-05:00" in local.stdout, local.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("time_zone: [1, 2]\n")
    refused = ctl("schedule", "set", str(bad))
    assert refused.returncode == 2 and "not a schedule" in refused.stderr, refused.stderr


def test_hold_then_confirm_and_list_shows_the_state_column_while_a_booking_is_held(ctl: Ctl) -> None:
    provider, customer = uid("p")[:6], uid("c")[:6]
    start, end = fresh_slot()
    made = create(ctl, provider)
    plain = ctl("-o", "table", "list", "--provider", provider)
    assert "STATE" not in plain.stdout, plain.stdout  # every booking confirmed and active: no column
    held = ctl.json("hold", "--service", "haircut", "--provider", provider, "--customer", customer,
                    "--start", iso(start), "--end", iso(end), "--ttl", "10m")  # fmt: skip
    assert held["state"] == "BOOKING_STATE_HELD" and held["expire_time"], held
    ctl.env["COLUMNS"] = "80"
    shown = ctl("-o", "table", "list", "--provider", provider)
    assert max(len(line) for line in shown.stdout.splitlines()) <= 80, shown.stdout
    rows = {line.split()[0]: line.split()[-1] for line in shown.stdout.splitlines()[1:]}
    assert rows == {held["id"]: "held", made["id"]: "active"}, shown.stdout
    wide = ctl("-o", "wide", "list", "--provider", provider).stdout
    assert f"held until {held['expire_time']}" in wide, wide  # when, in UTC
    too_long = ctl("hold", "--service", "haircut", "--provider", provider, "--start", iso(end),
                   "--end", iso(end + timedelta(hours=1)), "--ttl", "16m", "--customer", customer)  # fmt: skip
    assert too_long.returncode == 1 and "--ttl" in too_long.stderr, too_long.stderr
    confirmed = ctl.json("confirm", held["id"], "--notes", "paid")
    assert (confirmed["id"], confirmed["state"], confirmed["notes"]) == (held["id"], "BOOKING_STATE_CONFIRMED", "paid")
    again = ctl("confirm", held["id"])
    assert again.returncode == 1 and "NOT_HELD" in again.stderr, again.stderr
    assert "STATE" not in ctl("-o", "table", "list", "--provider", provider).stdout
    actions = [e["action"] for e in ctl.json("audit", held["id"])]
    assert actions == ["AUDIT_ACTION_HELD", "AUDIT_ACTION_CONFIRMED"]
