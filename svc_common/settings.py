"""Reading settings from an environment mapping, in one place for both services.

Each service builds one frozen Settings from an `Env` (its `read` classmethod); the command line
(svc_common.cli) reads the settings every service shares through the same `Env`. An `Env` never stops at the
first bad value: every problem is collected and `check()` raises them all at once (the command line prints one
per line and exits with status 2). It also remembers what it read, so `--check-config` can print the effective
settings (secrets and URL passwords redacted) and the table in docs/configuration.md is tested against what is
really read.

(A small reader rather than pydantic-settings: the services' settings are flat environment variables with
bounds, and this keeps the messages, the redaction and the table in one short module without a new dependency.)
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

REDACTED = "<redacted>"
# Read elsewhere with the service's environment: the container health check's TLS client (svc_common.tls).
ALSO_READ = frozenset({"TLS_CA_FILE", "TLS_SERVER_NAME"})
# Prefixes libraries read many variables of (OpenTelemetry's SDK): never reported as unknown.
LIBRARY_PREFIXES = ("OTEL_",)
# How alike a variable's name must be to a setting's to be taken for a misspelling of it (difflib's ratio:
# DATABSE_URL and DATABASE_URL 0.96, WORKER and WORKERS 0.92).
CLOSE_SPELLING = 0.85
REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel")  # redis-py's, and Sentinel (svc_common.redis_client)


class SettingsError(ValueError):
    """Settings that cannot be used: `problems` holds one message per bad value."""

    def __init__(self, problems: str | Iterable[str]) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


@dataclass(frozen=True)
class Entry:
    """One setting as read: its value as --check-config shows it, and its default as docs/configuration.md shows it."""

    name: str
    shown: str
    default: str
    from_env: bool


def _show(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if value is None or value == "":
        return "unset"
    return str(value)


def redact_url(url: str) -> str:
    """The URL with any password replaced (what a log line or --check-config may show); read by hand rather than
    by urlsplit, so that a URL naming several hosts (redis+sentinel://) is redacted too."""
    scheme, sep, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    credentials, at, hosts = authority.rpartition("@")
    user, colon, _password = credentials.partition(":")
    if not (sep and at and colon):
        return url
    return f"{scheme}://{user}:{REDACTED}@{hosts}{slash}{path}"


class Env:
    """Typed, bounded reads of environment variables; every problem is kept for `check()`."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        self.problems: list[str] = []
        self.entries: dict[str, Entry] = {}

    def problem(self, message: str) -> None:
        self.problems.append(message)

    def check(self) -> None:
        if self.problems:
            raise SettingsError(self.problems)

    def raw(self, name: str) -> str | None:
        """The variable's value, stripped; None when it is unset or blank."""
        value = self._environ.get(name, "").strip()
        return value or None

    def is_set(self, name: str) -> bool:
        return name in self._environ

    def note(self, name: str, value: object, default: object, *, secret: bool = False, url: bool = False) -> None:
        shown = _show(value)
        if secret and value:
            shown = REDACTED
        elif url and isinstance(value, str) and value:
            shown = redact_url(value)
        self.entries[name] = Entry(
            name, shown, "required" if default is _REQUIRED else _show(default), self.is_set(name)
        )

    def _set_instead(self, name: str) -> str:
        """A hint naming a variable that is set and spelled nearly as `name` (DATABSE_URL for DATABASE_URL)."""
        others = [other for other in self._environ if other != name]  # set but empty: no hint
        close = difflib.get_close_matches(name, others, n=1, cutoff=CLOSE_SPELLING)
        return f" ({close[0]} is set: a misspelling?)" if close else ""

    def unknown(self) -> list[str]:
        """Variables set with the prefix of a setting this service read (DB_, REDIS_, ...) that it did not read:
        misspelled, or meant for another service; each as a warning naming the closest known name, if any."""
        known = set(self.entries) | ALSO_READ
        prefixes = {name.split("_", 1)[0] + "_" for name in known if "_" in name} - set(LIBRARY_PREFIXES)
        found = []
        for name in sorted(self._environ):
            if name in known:
                continue
            if name.startswith(tuple(prefixes)):
                kin = [k for k in known if k.split("_", 1)[0] == name.split("_", 1)[0]]  # DB_POOL_MAX: DB_*
                close = difflib.get_close_matches(name, kin, n=1, cutoff=0.4)
            else:  # another prefix, but spelled nearly as a setting: DATABSE_URL, WORKER
                close = difflib.get_close_matches(name, list(known), n=1, cutoff=CLOSE_SPELLING)
                if not close:
                    continue
            found.append(f"{name} is set but not read" + (f": did you mean {close[0]}?" if close else ""))
        return found

    def report(self) -> str:
        """The effective settings, one `NAME=value` per line (secrets redacted), marking defaults."""
        return "\n".join(
            f"{e.name}={e.shown}" + ("" if e.from_env else "  # default")
            for e in sorted(self.entries.values(), key=lambda e: e.name)
        )

    # --- the typed reads -------------------------------------------------------------------------------------

    def text(self, name: str, default: str = "", *, choices: tuple[str, ...] | None = None) -> str:
        value = self.raw(name) or default
        if choices is not None:
            value = value.lower() if all(c.islower() for c in choices) else value.upper()
            if value not in choices:
                self.problem(f"{name} must be one of {', '.join(choices)}, got {value!r}")
                value = default
        self.note(name, value, default)
        return value

    def require(self, name: str) -> str:
        value = self.raw(name)
        if value is None:
            self.problem(f"environment variable {name} is required{self._set_instead(name)}")
        self.note(name, value, _REQUIRED)
        return value or ""

    def optional_secret(self, name: str) -> str:
        """A secret that may be unset ("")."""
        value = self.raw(name) or ""
        self.note(name, value, "", secret=True)
        return value

    def secret(self, name: str, *, min_bytes: int) -> str:
        value = self.raw(name)
        if value is None:
            self.problem(f"environment variable {name} is required{self._set_instead(name)}")
        elif len(value.encode()) < min_bytes:
            self.problem(f"{name} must be at least {min_bytes} bytes (HS256 keys shorter than that are weak)")
        self.note(name, value, _REQUIRED, secret=True)
        return value or ""

    def url(
        self,
        name: str,
        schemes: tuple[str, ...],
        *,
        required: bool = False,
        forms: Mapping[str, Callable[[str], None]] | None = None,
    ) -> str:
        """A URL with one of `schemes` and a host (or a unix socket path); "" when unset and not required. A scheme
        in `forms` is checked by its function instead (ValueError: what is wrong)."""
        value = self.raw(name)
        if value is None:
            if required:
                self.problem(f"environment variable {name} is required{self._set_instead(name)}")
            self.note(name, "", _REQUIRED if required else "", url=True)
            return ""
        self.note(name, value, _REQUIRED if required else "", url=True)
        check = (forms or {}).get(value.partition("://")[0])
        if check is not None:
            try:
                check(value)
            except ValueError as exc:
                self.problem(f"{name}: {exc}")
            return value
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 (parses the port: ValueError when it is not a number in range)
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in schemes or not (parts.hostname or parts.path):
            self.problem(f"{name} must be a URL starting with {' or '.join(s + '://' for s in schemes)}")
        return value

    def integer(
        self,
        name: str,
        default: int,
        *,
        least: int | None = None,
        most: int | None = None,
        shown_default: str | None = None,
    ) -> int:
        raw = self.raw(name)
        value = default
        if raw is not None:
            try:
                value = int(raw)
            except ValueError:
                self.problem(f"{name} must be an integer, got {raw!r}")
            else:
                if not self._within(name, value, least, most):
                    value = default
        self.note(name, value, default if shown_default is None else shown_default)
        return value

    def number(
        self,
        name: str,
        default: float,
        *,
        least: float | None = None,
        most: float | None = None,
        above: float | None = None,
    ) -> float:
        raw = self.raw(name)
        value = default
        if raw is not None:
            try:
                value = float(raw)
            except ValueError:
                self.problem(f"{name} must be a number, got {raw!r}")
                value = default
            else:
                if not math.isfinite(value):
                    self.problem(f"{name} must be a finite number, got {raw!r}")
                    value = default
                elif above is not None and not (value > above and (most is None or value <= most)):
                    at_most = f" and at most {_show(most)}" if most is not None else ""
                    self.problem(f"{name} must be more than {_show(above)}{at_most}, got {raw}")
                    value = default
                elif not self._within(name, value, least, most):
                    value = default
        self.note(name, value, default)
        return value

    def address(self, name: str, default: str) -> tuple[str, int] | None:
        """HOST:PORT (`default` when unset), or None when set to an empty value (turned off)."""
        raw = self._environ.get(name)
        value = (default if raw is None else raw).strip()
        self.note(name, value, default)
        if not value:
            return None
        parts = urlsplit(f"//{value}")
        try:
            port = parts.port
        except ValueError:
            port = None
        if not parts.hostname or port is None:
            self.problem(f"{name} must be HOST:PORT (or empty for none), got {value!r}")
            return None
        return parts.hostname, port

    def _within(self, name: str, value: float, least: float | None, most: float | None) -> bool:
        if (least is None or value >= least) and (most is None or value <= most):
            return True
        if least is not None and most is not None:
            bounds = f"from {_show(least)} to {_show(most)}"
        else:
            bounds = f"at least {_show(least)}" if least is not None else f"at most {_show(most)}"
        self.problem(f"{name} must be {bounds}, got {_show(value)}")
        return False


_REQUIRED = object()
T = TypeVar("T")


def read_checked(read: Callable[..., T], environ: Mapping[str, str], **arguments: Any) -> T:
    """`read(env, **arguments)` from `environ`, or SettingsError naming every problem."""
    env = Env(environ)
    value = read(env, **arguments)
    env.check()
    return value
