"""Who calls: the authenticated caller of the RPC being served, and its role. No token handling here
(svc_common.auth verifies tokens and sets the caller), so the domain can name callers without PyJWT."""

from __future__ import annotations

import contextvars
import enum
from dataclasses import dataclass


class Role(enum.Enum):
    USER = "user"
    PROVIDER = "provider"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller."""

    id: str
    name: str
    role: Role


_current: contextvars.ContextVar[Principal] = contextvars.ContextVar("principal")


def current_principal() -> Principal:
    """The caller of the RPC being served; set by the server's auth interceptor."""
    return _current.get()


def set_current_principal(principal: Principal) -> contextvars.Token[Principal]:
    return _current.set(principal)
