"""bookingctl's saved contexts, in kubeconfig's shape: where the services are, how to speak TLS to them, and
where the token comes from, under a name.

The file is $BOOKINGCTL_CONFIG, else $XDG_CONFIG_HOME/bookingctl/config.yaml (~/.config/...); `bookingctl config`
writes it (mode 600):

    current-context: staging
    contexts:
    - name: staging
      context:
        target: booking.staging.example.com:443
        notify-target: booking.staging.example.com:443   # default: the target (one address for both)
        tls: true
        cacert: /etc/booking/ca.pem
        token-command: vault read -field=token secret/booking/ops   # or token-file: PATH, or token-env: NAME

A setting comes from the first of: its flag; the context named by --context; the environment (BOOKING_TARGET,
BOOKING_NOTIFY_TARGET, BOOKING_TOKEN); the current context; the default.
"""

from __future__ import annotations

import difflib
import os
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_NOTIFY_TARGET = "127.0.0.1:50052"  # make run's notify, when the target is make run's booking
KEYS = ("target", "notify-target", "tls", "cacert", "cert", "key", "server-name", "timeout")
TOKEN_KEYS = ("token-file", "token-command", "token-env")
ENVIRONMENT = {"target": "BOOKING_TARGET", "notify-target": "BOOKING_NOTIFY_TARGET", "token": "BOOKING_TOKEN"}


class ConfigError(Exception):
    """The config file or a context cannot be used as written (exit status 2)."""


def config_path() -> Path:
    named = os.environ.get("BOOKINGCTL_CONFIG")
    if named:
        return Path(named).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "bookingctl" / "config.yaml"


def suggestion(word: str, choices: Any) -> str:
    """' (did you mean X?)' for the closest of `choices`, or ''."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


@dataclass
class Config:
    path: Path
    data: dict[str, Any]

    @classmethod
    def load(cls) -> Config:
        path = config_path()
        try:
            data = yaml.safe_load(path.read_text()) if path.exists() else None
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        data = data or {}
        if not isinstance(data, dict) or not isinstance(data.setdefault("contexts", []), list):
            raise ConfigError(f"{path}: not a bookingctl config (expected current-context and a contexts list)")
        for entry in data["contexts"]:
            if not (isinstance(entry, dict) and isinstance(entry.get("name"), str)):
                raise ConfigError(f"{path}: each context needs a name and settings, not {entry!r}"[:300])
            if not isinstance(entry.setdefault("context", {}) or {}, dict):
                raise ConfigError(f"{path}: context {entry['name']!r}: its settings must be a mapping")
        return cls(path, data)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(yaml.safe_dump(self.data, sort_keys=False))
        temporary.chmod(0o600)  # it may name where tokens come from
        temporary.replace(self.path)

    @property
    def names(self) -> list[str]:
        return [str(entry.get("name")) for entry in self.data["contexts"]]

    @property
    def current(self) -> str:
        return str(self.data.get("current-context") or "")

    def context(self, name: str) -> dict[str, Any]:
        for entry in self.data["contexts"]:
            if entry.get("name") == name:
                settings = entry["context"] or {}
                unknown = [key for key in settings if key not in (*KEYS, *TOKEN_KEYS, "token")]
                if unknown:
                    raise ConfigError(
                        f"{self.path}: context {name!r} has an unknown key {unknown[0]!r}"
                        + suggestion(unknown[0], (*KEYS, *TOKEN_KEYS))
                    )
                return dict(settings)
        raise ConfigError(f"no context {name!r} in {self.path}" + suggestion(name, self.names))

    def set_context(self, name: str, settings: dict[str, Any]) -> None:
        for entry in self.data["contexts"]:
            if entry.get("name") == name:
                merged = {**(entry.get("context") or {}), **settings}
                if any(key in settings for key in TOKEN_KEYS):  # one token source at a time
                    merged = {k: v for k, v in merged.items() if k not in TOKEN_KEYS or k in settings}
                entry["context"] = merged
                return
        self.data["contexts"].append({"name": name, "context": settings})

    def delete_context(self, name: str) -> None:
        self.context(name)  # refuses an unknown name, with a suggestion
        self.data["contexts"] = [entry for entry in self.data["contexts"] if entry.get("name") != name]
        if self.current == name:
            self.data.pop("current-context", None)


@dataclass(frozen=True)
class Settings:
    """Where and how bookingctl calls, resolved from flags, the environment and a context."""

    target: str
    notify_target: str
    token: str
    tls: bool
    cacert: str | None
    cert: str | None
    key: str | None
    server_name: str | None
    timeout: float


def resolve(flags: dict[str, Any], *, need_token: bool) -> Settings:
    """The settings for one run: `flags` holds the global flags given (None where not given)."""
    config = Config.load()
    chosen = flags.get("context")
    named = config.context(chosen) if chosen else {}
    current = config.context(config.current) if not chosen and config.current in config.names else {}

    def pick(key: str, default: Any = None) -> Any:
        flag = flags.get(key.replace("-", "_"))
        if flag is not None and flag is not False:  # (not `in (None, False)`: a flag of 0 equals False)
            return flag
        if key in named:
            return named[key]
        if key in ENVIRONMENT and os.environ.get(ENVIRONMENT[key]):
            return os.environ[ENVIRONMENT[key]]
        return current.get(key, default)

    target = pick("target", DEFAULT_TARGET)
    # One address serves both behind the balancer; only make run's default pair differs.
    notify_target = pick("notify-target") or (DEFAULT_NOTIFY_TARGET if target == DEFAULT_TARGET else target)
    token = ""
    if need_token:  # (a token command runs only when a call needs its token)
        if flags.get("token"):
            token = str(flags["token"])
        elif _has_token(named):
            token = _token(named)
        elif os.environ.get("BOOKING_TOKEN"):
            token = os.environ["BOOKING_TOKEN"]
        else:
            token = _token(current)
        if not token:
            raise ConfigError("no token: pass --token, set BOOKING_TOKEN, or give a context a token source")
    return Settings(
        target=str(target),
        notify_target=str(notify_target),
        token=token,
        tls=bool(pick("tls", False)) or any(pick(k) for k in ("cacert", "cert", "key")),
        cacert=pick("cacert"),
        cert=pick("cert"),
        key=pick("key"),
        server_name=pick("server-name"),
        timeout=_seconds(pick("timeout", 10.0)),
    )


def _seconds(value: Any) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise ConfigError(f"timeout must be a positive number of seconds, not {value!r}"[:200])
    return seconds


def _has_token(settings: dict[str, Any]) -> bool:
    return any(key in settings for key in ("token", *TOKEN_KEYS))


def _token(settings: dict[str, Any]) -> str:
    """The token a context names: itself, a file's content, a command's output, or an environment variable's."""
    if settings.get("token"):
        return str(settings["token"]).strip()
    if settings.get("token-file"):
        path = Path(str(settings["token-file"])).expanduser()
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"token-file {path}: {exc.strerror}") from exc
    if settings.get("token-command"):
        command = str(settings["token-command"])
        try:
            done = subprocess.run(shlex.split(command), capture_output=True, text=True, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ConfigError(f"token-command {command!r}: {exc}") from exc
        if done.returncode != 0:
            raise ConfigError(f"token-command {command!r} failed ({done.returncode}): {done.stderr.strip()[:200]}")
        return done.stdout.strip()
    if settings.get("token-env"):
        return os.environ.get(str(settings["token-env"]), "").strip()
    return ""
