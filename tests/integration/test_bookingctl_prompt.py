"""bookingctl's questions answered at a real terminal (a pseudo-terminal): a purge or a hard delete only when
confirmed; Ctrl-C ends the prompt at once, Ctrl-D means no; piped, it refuses without --yes."""

from __future__ import annotations

import signal
from datetime import UTC, datetime, timedelta

import pytest

from tests.support.bookingctl import Ctl, at_terminal, iso, soft_deleted

pytestmark = pytest.mark.timeout(180)


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
    assert "purged" in screen and "3 bookings" in screen
    assert ctl.json("purge", "--before", before)["purge_count"] == 0
    more = soft_deleted(ctl, 1)
    assert ctl.json("purge", "--before", iso(datetime.now(UTC) + timedelta(minutes=1)), "--force", "--yes") == {
        "purge_count": 1,
        "purge_sample": more,
        "force": True,
    }
    assert all(ctl("get", i).returncode == 1 for i in ids)


def test_the_prompt_ends_at_once_on_ctrl_c_and_ctrl_d_means_no_and_hard_delete_asks_too(ctl: Ctl) -> None:
    ids = soft_deleted(ctl, 2)
    purge = [*ctl.base, "purge", "--before", iso(datetime.now(UTC) + timedelta(minutes=1)), "--force"]
    status, screen = at_terminal(purge, ctl.env, signal.SIGINT)
    assert status == 130, screen
    status, screen = at_terminal(purge, ctl.env, "\x04")
    assert status == 2 and "not purged" in screen and "Traceback" not in screen, screen
    hard = [*ctl.base, "hard-delete", ids[0]]
    status, screen = at_terminal(hard, ctl.env, "n")
    assert status == 2 and "not deleted" in screen and f"Permanently delete booking {ids[0]}" in screen
    assert ctl("get", ids[0]).returncode == 0
    piped = ctl("hard-delete", ids[0])
    assert piped.returncode == 2 and "--yes" in piped.stderr
    status, screen = at_terminal(hard, ctl.env, "y")
    assert status == 0, screen
    assert ctl("get", ids[0]).returncode == 1 and ctl("get", ids[1]).returncode == 0
