"""How many Subscribe streams an instance holds: per caller (the token's `sub`) and in all.

Each stream costs the instance memory (about 26 KB with its grpc call) for as long as it is open, so no one
caller may grow it without bound: past a bound a new stream is refused with RESOURCE_EXHAUSTED
`TOO_MANY_STREAMS`, the bound in the ErrorInfo metadata. Admins get a bound of their own (a gateway or an
internal service may hold many subscriptions under one token). A stream counts from the moment it is accepted
until its handler ends, whichever way it ends: the client closes it, the server ends it, or the client vanishes
(keepalive notices a dead connection within about 40 s, svc_common.grpc_server.KEEPALIVE_OPTIONS).
"""

from __future__ import annotations

from dataclasses import dataclass

from svc_common.errors import ResourceExhausted
from svc_common.principal import Principal, Role


@dataclass(frozen=True)
class StreamBounds:
    """0 means no bound."""

    per_caller: int = 100  # a user's or a provider's streams
    per_admin: int = 5_000  # an admin's streams
    total: int = 50_000  # every caller's streams together

    def of(self, principal: Principal) -> int:
        return self.per_admin if principal.role is Role.ADMIN else self.per_caller


def too_many(bound: int, scope: str) -> ResourceExhausted:
    whose = "this caller's" if scope == "caller" else "all callers'"
    return ResourceExhausted(
        f"this instance holds {bound} of {whose} streams already, its bound; close one or retry later",
        reason="TOO_MANY_STREAMS",
        metadata={"bound": str(bound), "scope": scope},
    )


class StreamCounts:
    """The streams open on this instance, by caller."""

    def __init__(self, bounds: StreamBounds) -> None:
        self.bounds = bounds
        self.total = 0
        self._by_caller: dict[str, int] = {}

    def open(self, principal: Principal) -> None:
        """Count one more stream of `principal` (each open is matched by a `close`); raises TOO_MANY_STREAMS
        past a bound. A pair of calls rather than a context manager: a generator-based one would be kept by
        every open stream, about 330 bytes each."""
        bound, total_bound = self.bounds.of(principal), self.bounds.total
        held = self._by_caller.get(principal.id, 0)
        if bound and held >= bound:  # first: the bound the caller can do something about
            raise too_many(bound, "caller")
        if total_bound and self.total >= total_bound:
            raise too_many(total_bound, "instance")
        self._by_caller[principal.id] = held + 1
        self.total += 1

    def close(self, principal: Principal) -> None:
        """One stream of `principal` counted by `open` has ended."""
        self.total -= 1
        left = self._by_caller[principal.id] - 1
        if left:
            self._by_caller[principal.id] = left
        else:
            del self._by_caller[principal.id]
