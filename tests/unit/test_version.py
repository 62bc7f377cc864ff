"""What is deployed: `--version`, and the commit read from BUILD_COMMIT or the checkout's git files."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest

from booking_service.settings import Settings
from svc_common.cli import run_service
from svc_common.version import _commit_of, build_info

SHA = "0123456789abcdef0123456789abcdef01234567"


def test_version_prints_the_version_commit_and_python_and_needs_no_settings(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BUILD_COMMIT", "c0ffee")
    monkeypatch.delenv("DATABASE_URL", raising=False)  # settings are not read for --version

    async def never(_settings: Settings) -> None:
        raise AssertionError("--version must not serve")

    assert run_service("booking_service", "", "127.0.0.1:1", Settings.read, never, ["--version"]) == 0
    version = build_info({}).version
    assert capsys.readouterr().out == f"booking_service {version} (commit c0ffee, Python {platform.python_version()})\n"
    assert version[0].isdigit()  # the distribution's own version, installed


@pytest.mark.parametrize(
    ("files", "commit"),
    [
        ({"HEAD": f"{SHA}\n"}, SHA[:12]),  # detached
        ({"HEAD": "ref: refs/heads/main\n", "refs/heads/main": f"{SHA}\n"}, SHA[:12]),
        ({"HEAD": "ref: refs/heads/main\n", "packed-refs": f"# pack-refs\n{SHA} refs/heads/main\n"}, SHA[:12]),
        ({"HEAD": "ref: refs/heads/gone\n"}, None),
        ({}, None),  # not a checkout (an image)
    ],
)
def test_the_commit_is_read_from_the_checkouts_git_files(tmp_path: Path, files: dict[str, str], commit: str) -> None:
    for name, text in files.items():
        (tmp_path / ".git" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / ".git" / name).write_text(text)
    assert _commit_of(tmp_path) == commit
    assert build_info({"BUILD_COMMIT": "abc"}).commit == "abc"  # the image's build argument wins
