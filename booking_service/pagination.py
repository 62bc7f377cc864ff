"""Opaque page tokens: the keyset position of the last item plus a fingerprint of the query they belong to,
signed with a server-side key (HMAC-SHA256), so a token the service did not make is refused before any of its
values reaches a query.

A token only positions a query; the caller's scope is applied again on every page, so even a token of another
caller can never widen what a caller sees. Keyset paging never repeats or skips an item that exists throughout.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Sequence

from booking_service.domain import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from svc_common.errors import FieldViolation, InvalidArgument

Key = Sequence[str | int]
MAX_TOKEN_CHARS = 1024
_MAC_BYTES = 16


def page_size(requested: int) -> int:
    if requested < 0:
        raise InvalidArgument([FieldViolation("page_size", "must not be negative")])
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)


def fingerprint(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]


def derive_key(secret: str) -> bytes:
    """The page-token key of a service secret (every instance sharing the secret accepts the others' tokens)."""
    return hmac.new(secret.encode(), b"booking_service page tokens v1", hashlib.sha256).digest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def invalid_token() -> InvalidArgument:
    return InvalidArgument(
        [FieldViolation("page_token", "not a page token of this query; start again without one")],
        reason="INVALID_PAGE_TOKEN",
    )


class PageTokens:
    """Makes and checks signed page tokens: `<base64 JSON>.<base64 MAC>`."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def _mac(self, body: str) -> bytes:
        return hmac.new(self._key, body.encode(), hashlib.sha256).digest()[:_MAC_BYTES]

    def encode(self, query: str, key: Key) -> str:
        body = _b64(json.dumps({"q": query, "k": list(key)}, separators=(",", ":")).encode())
        return f"{body}.{_b64(self._mac(body))}"

    def decode(self, token: str, query: str, shape: Sequence[type]) -> list[str | int] | None:
        """The key in `token`, or None for an empty token. `shape` gives the type of each key part."""
        if not token:
            return None
        body, _, mac = token.partition(".")
        if len(token) > MAX_TOKEN_CHARS or not body or not mac:
            raise invalid_token()
        try:
            valid = hmac.compare_digest(_unb64(mac), self._mac(body))
            data = json.loads(_unb64(body)) if valid else None
        except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
            raise invalid_token() from exc
        if not isinstance(data, dict) or data.get("q") != query:
            raise invalid_token()
        key = data.get("k")
        if (
            not isinstance(key, list)
            or len(key) != len(shape)
            or not all(type(part) is kind for part, kind in zip(key, shape, strict=True))
            or any(type(part) is int and not 0 <= part < 2**63 for part in key)
        ):
            raise invalid_token()
        return key
