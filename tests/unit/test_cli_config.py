"""bookingctl's config file as a user may have written it by hand: whatever is malformed is one clear error
(exit status 2 in bookingctl), never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from booking_client._cli_config import ConfigError, resolve


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("contexts: [1]", "each context needs a name"),
        ("contexts: [{context: {target: 'h:1'}}]", "each context needs a name"),
        ("contexts: [{name: a, context: 'x'}]", "its settings must be a mapping"),
        ("contexts: {a: 1}", "not a bookingctl config"),
        ("current-context: a\ncontexts: [{name: a, context: {timeout: abc}}]", "timeout must be a positive"),
        ("current-context: a\ncontexts: [{name: a, context: {timeout: -1}}]", "timeout must be a positive"),
        ("current-context: a\ncontexts: [{name: a, context: {tarrget: 'h:1'}}]", "did you mean target?"),
        ("contexts: [", "c.yaml"),
    ],
)
def test_a_malformed_config_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, said: str
) -> None:
    (tmp_path / "c.yaml").write_text(text + "\n")
    monkeypatch.setenv("BOOKINGCTL_CONFIG", str(tmp_path / "c.yaml"))
    with pytest.raises(ConfigError, match=said.replace("?", r"\?")):
        resolve({"token": "t"}, need_token=True)


def test_a_timeout_flag_must_be_a_positive_number(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOOKINGCTL_CONFIG", str(tmp_path / "none.yaml"))
    assert resolve({"token": "t", "timeout": 2.5}, need_token=True).timeout == 2.5
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="timeout must be a positive"):
            resolve({"token": "t", "timeout": bad}, need_token=True)


def test_a_setting_comes_from_the_flag_then_the_named_context_then_the_environment_then_the_current_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "c.yaml").write_text(
        "current-context: cur\n"
        "contexts:\n"
        "- {name: cur, context: {target: 'cur:1', token-env: CUR_TOKEN}}\n"
        "- {name: named, context: {target: 'named:1', token-env: NAMED_TOKEN}}\n"
    )
    monkeypatch.setenv("BOOKINGCTL_CONFIG", str(tmp_path / "c.yaml"))
    monkeypatch.setenv("CUR_TOKEN", "cur-token")
    monkeypatch.setenv("NAMED_TOKEN", "named-token")

    def picked(**flags: str) -> tuple[str, str]:
        settings = resolve(flags, need_token=True)
        return settings.target, settings.token

    assert picked() == ("cur:1", "cur-token")
    monkeypatch.setenv("BOOKING_TARGET", "env:1")
    monkeypatch.setenv("BOOKING_TOKEN", "env-token")
    assert picked() == ("env:1", "env-token")  # the environment beats the current context
    assert picked(context="named") == ("named:1", "named-token")  # --context beats the environment
    assert picked(target="flag:1", token="flag-token") == ("flag:1", "flag-token")  # a flag beats everything
    assert picked(target="flag:1", context="named") == ("flag:1", "named-token")
