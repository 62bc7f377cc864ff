"""Connecting to PostgreSQL when it may fail over: the URL forms libpq takes for several hosts, and a connector
that tries them one at a time, each within its own connect timeout.

A highly available PostgreSQL (Patroni, RDS Multi-AZ, Cloud SQL HA, a standby promoted by hand) is reached
through several hosts, in either of libpq's forms:

    postgresql://user@h1:5432,h2:5432/bookings?target_session_attrs=read-write
    postgresql://user@/bookings?host=h1,h2&port=5432,5433&target_session_attrs=read-write

asyncpg takes both, but gives one timeout to all hosts together and moves on to the next host only when a
connection is refused: a host that is frozen (a hung machine, a dead network path) takes the whole timeout and
the next one is never tried. `Connector` tries each host with its own timeout, whatever went wrong (a refusal, a
timeout, a standby where `target_session_attrs` asks for a primary, a server starting up), the host that last
answered first, so that after a failover new connections go straight to the new primary.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs, unquote

import asyncpg

from svc_common.settings import Env

log = logging.getLogger(__name__)

POSTGRES_SCHEMES = ("postgresql", "postgres")  # the URL forms asyncpg takes
DEFAULT_PORT = 5432
DEFAULT_CONNECT_TIMEOUT_SECONDS = 3.0  # for each host: DATABASE_CONNECT_TIMEOUT_SECONDS
# libpq's (and asyncpg's) values of target_session_attrs.
TARGET_SESSION_ATTRS = ("any", "primary", "standby", "prefer-standby", "read-write", "read-only")

Host = tuple[str, int]


def _port(text: str, url_hint: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"port {text!r} of {url_hint} is not a number from 1 to 65535")
    return int(text)


def _split_host(spec: str) -> tuple[str, str]:
    """`host[:port]`, `[v6]:port` or a socket folder, as (host, port text or "")."""
    if spec.startswith("["):
        host, _, rest = spec[1:].partition("]")
        return host, rest.removeprefix(":")
    if spec.startswith("/"):
        return spec, ""
    host, _, port = spec.partition(":")
    return host, port


def hosts(url: str) -> list[Host]:
    """The (host, port) pairs of a PostgreSQL URL, in order; ValueError saying what is wrong with it."""
    scheme, sep, rest = url.partition("://")
    if scheme not in POSTGRES_SCHEMES or not sep:
        raise ValueError(f"must be a URL starting with {' or '.join(s + '://' for s in POSTGRES_SCHEMES)}")
    end = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, query = rest[:end], rest[end:].partition("?")[2]
    hostspec = unquote(authority.rpartition("@")[2])
    params = parse_qs(query, keep_blank_values=True)
    attrs = params.get("target_session_attrs", ["any"])[-1]
    if attrs not in TARGET_SESSION_ATTRS:
        raise ValueError(f"target_session_attrs must be one of {', '.join(TARGET_SESSION_ATTRS)}, not {attrs!r}")
    if "host" in params and not hostspec:  # ?host=h1,h2&port=p1,p2 (a port each, or one for all)
        names = params["host"][-1].split(",")
        ports = params.get("port", [""])[-1].split(",")
        if len(ports) not in (1, len(names)):
            raise ValueError(f"{len(names)} hosts but {len(ports)} ports")
        pairs = [(name, ports[i if len(ports) > 1 else 0]) for i, name in enumerate(names)]
    else:
        pairs = [_split_host(spec) for spec in hostspec.split(",")] if hostspec else [("localhost", "")]
        default = params.get("port", [""])[-1]
        pairs = [(name, port or default) for name, port in pairs]
    found = []
    for name, port in pairs:
        if not name:
            raise ValueError("a host in the list is empty")
        found.append((name, _port(port, name) if port else DEFAULT_PORT))
    return found


def check_url(url: str) -> None:
    """Raise ValueError if `url` is not a PostgreSQL URL this module can connect with (settings' check)."""
    hosts(url)


def read_url(env: Env, name: str, *, required: bool = False) -> str:
    """The PostgreSQL URL in `name` ("" when unset and not required), checked by `hosts`."""
    return env.url(name, POSTGRES_SCHEMES, required=required, forms=dict.fromkeys(POSTGRES_SCHEMES, check_url))


def database_connect_timeout(env: Env) -> float:
    """DATABASE_CONNECT_TIMEOUT_SECONDS: how long each host may take to accept a connection."""
    return env.number("DATABASE_CONNECT_TIMEOUT_SECONDS", DEFAULT_CONNECT_TIMEOUT_SECONDS, above=0, most=600)


class NoHostAvailable(ConnectionError):
    """No host of the URL serves as `target_session_attrs` asks (all standbys, say, mid-failover): a connection
    error like any other, so callers wait and retry."""


class Connector:
    """Connections to the database at `url`, trying its hosts one at a time, each within `connect_timeout`
    seconds, starting from the one that answered last. Callable as asyncpg's pool `connect` function."""

    def __init__(self, url: str, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_SECONDS) -> None:
        self.url = url
        self.connect_timeout = connect_timeout
        self.hosts: Sequence[Host] = hosts(url)
        self._attrs = _attrs(url)  # target_session_attrs, for the log
        self._first = 0  # the index of the host to try first: the one that answered last

    async def __call__(self, *_dsn: object, **kwargs: Any) -> asyncpg.Connection[Any]:
        """A connection (asyncpg.connect's keyword arguments, but its timeout) to the first host that takes one;
        the last host's error if none does. The pool passes its DSN first: ignored, it is this one's."""
        kwargs.pop("timeout", None)
        count = len(self.hosts)
        last: BaseException | None = None
        for step in range(count):
            index = (self._first + step) % count
            host, port = self.hosts[index]
            try:
                conn: asyncpg.Connection[Any] = await asyncpg.connect(
                    self.url, host=host, port=port, timeout=self.connect_timeout, **kwargs
                )
            except asyncpg.TargetServerAttributeNotMatched as exc:
                last = NoHostAvailable(f"PostgreSQL at {host}:{port} does not serve as {self._attrs}")
                last.__cause__ = exc
                continue
            except Exception as exc:  # any failure moves on to the next host, as libpq does
                if count == 1:
                    raise
                log.debug("PostgreSQL at %s:%d refused or did not answer: %s", host, port, type(exc).__name__)
                last = exc
                continue
            if index != self._first:
                log.info("connected to PostgreSQL at %s:%d (it answers for %s now)", host, port, self._attrs)
                self._first = index
            return conn
        assert last is not None
        raise last

    async def listening(self, channel: str, callback: Any, **kwargs: Any) -> asyncpg.Connection[Any]:
        """A connection (as `__call__` makes it) that LISTENs on `channel`. A standby refuses LISTEN (a URL without
        `target_session_attrs=read-write` may lead to one): NoHostAvailable, and the next host is tried first."""
        conn = await self(**kwargs)
        try:
            await conn.add_listener(channel, callback)
        except asyncpg.ReadOnlySQLTransactionError as exc:
            conn.terminate()
            self.pass_over()
            raise NoHostAvailable(f"{exc}: a standby; the next host is tried first") from exc
        except BaseException:
            conn.terminate()
            raise
        return conn

    def pass_over(self) -> None:
        """The host that answered last turned out not to serve as wanted (read-only): try the next one first."""
        self._first = (self._first + 1) % len(self.hosts)


def _attrs(url: str) -> str:
    return parse_qs(url.partition("?")[2]).get("target_session_attrs", ["any"])[-1]
