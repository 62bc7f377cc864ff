"""Opaque page tokens: the keyset position of the last item plus a fingerprint of the query they belong to.

A token only positions a query; the caller's scope is applied again on every page, so a forged token can
never widen what a caller sees. Keyset paging never repeats or skips an item that exists throughout.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Sequence

from booking_service.domain import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from svc_common.errors import FieldViolation, InvalidArgument

Key = Sequence[str | int]


def page_size(requested: int) -> int:
    if requested < 0:
        raise InvalidArgument([FieldViolation("page_size", "must not be negative")])
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)


def fingerprint(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]


def encode(query: str, key: Key) -> str:
    raw = json.dumps({"q": query, "k": list(key)}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode(token: str, query: str, shape: Sequence[type]) -> list[str | int] | None:
    """The key in `token`, or None for an empty token. `shape` gives the type of each key part."""
    if not token:
        return None
    bad = InvalidArgument(
        [FieldViolation("page_token", "not a page token of this query; start again without one")],
        reason="INVALID_PAGE_TOKEN",
    )
    if len(token) > 1024:
        raise bad
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise bad from exc
    if not isinstance(data, dict) or data.get("q") != query:
        raise bad
    key = data.get("k")
    if (
        not isinstance(key, list)
        or len(key) != len(shape)
        or not all(type(part) is kind for part, kind in zip(key, shape, strict=True))
        or any(type(part) is int and not 0 <= part < 2**63 for part in key)
    ):
        raise bad
    return key
