"""Who calls: the authenticated caller of the RPC being served, and its role. No token handling here
(svc_common.auth verifies tokens and sets the caller), so the domain can name callers without PyJWT."""

from __future__ import annotations

import contextvars
import enum
import math
from dataclasses import dataclass, field


class Role(enum.Enum):
    USER = "user"
    PROVIDER = "provider"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller; `expires_at` (time.time(), the leeway included) is when its token stops being
    accepted: a stream it opened ends then (not a part of who it is: two principals compare by the rest)."""

    id: str
    name: str
    role: Role
    expires_at: float = field(default=math.inf, compare=False)


_current: contextvars.ContextVar[Principal] = contextvars.ContextVar("principal")


def current_principal() -> Principal:
    """The caller of the RPC being served; set by the server's auth interceptor."""
    return _current.get()


def set_current_principal(principal: Principal) -> contextvars.Token[Principal]:
    return _current.set(principal)
