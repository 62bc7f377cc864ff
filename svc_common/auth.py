"""Caller identity from HS256 JWTs with claims `sub`, `name`, `role` and `exp` (verified with PyJWT). The identity
itself (Principal, Role, the current caller) is svc_common.principal, which the domain imports without PyJWT."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeGuard

import jwt

from svc_common.errors import Unauthenticated
from svc_common.principal import Principal, Role, current_principal, set_current_principal

__all__ = ["Principal", "Role", "TokenVerifier", "current_principal", "mint", "set_current_principal"]

ALGORITHM = "HS256"
REQUIRED_CLAIMS = ("sub", "name", "role", "exp")
MAX_TOKEN_BYTES = 8192
MAX_SUBJECT_CHARS = 128
MAX_NAME_CHARS = 256
MAX_EXP = 253402300799  # 9999-12-31T23:59:59Z
MIN_SECRET_BYTES = 32  # RFC 7518 3.2: an HS256 key at least as long as the hash


def _clean(value: object, max_chars: int) -> TypeGuard[str]:
    return isinstance(value, str) and len(value) <= max_chars and value.isprintable()


class TokenVerifier:
    """Verifies tokens; a verified token is remembered (up to `cache_size` of them) until it expires, so a
    client that reuses its token costs one dictionary lookup per call instead of an HMAC and JSON decode."""

    def __init__(
        self,
        secret: str,
        *,
        leeway_seconds: float = 5.0,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if len(secret.encode()) < MIN_SECRET_BYTES:
            raise ValueError(f"JWT secret must be at least {MIN_SECRET_BYTES} bytes")
        self._secret = secret
        self._leeway = leeway_seconds
        self._options = {"require": list(REQUIRED_CLAIMS)}
        self._cache_size = cache_size
        self._verified: dict[str, tuple[Principal, float]] = {}
        self._clock = clock  # the time expiry is judged by (PyJWT judges by the system's too)

    def verify_header(self, header: str | None) -> Principal:
        """Verify an `authorization` metadata value of the form `Bearer <JWT>`."""
        if not header:
            raise Unauthenticated("missing authorization metadata", reason="MISSING_TOKEN")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("authorization must be 'Bearer <token>'", reason="MALFORMED_TOKEN")
        return self.verify(token.strip())

    def verify(self, token: str) -> Principal:
        cached = self._verified.get(token)
        if cached is not None:
            principal, expires = cached
            if self._clock() < expires:
                return principal
            del self._verified[token]
        principal, expires = self._decode(token)
        if len(self._verified) >= self._cache_size:
            del self._verified[next(iter(self._verified))]  # the oldest entry
        self._verified[token] = (principal, expires)
        return principal

    def _decode(self, token: str) -> tuple[Principal, float]:
        if len(token) > MAX_TOKEN_BYTES:
            raise Unauthenticated("token too large", reason="MALFORMED_TOKEN")
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                options=self._options,  # type: ignore[arg-type]
                leeway=self._leeway,
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthenticated("token expired", reason="TOKEN_EXPIRED") from exc
        except jwt.InvalidSignatureError as exc:
            raise Unauthenticated("token signature is invalid", reason="INVALID_TOKEN") from exc
        except jwt.DecodeError as exc:  # its own words name the library's internals (a codec, a byte)
            raise Unauthenticated(
                "token is not a JWT (header.payload.signature, base64url)", reason="INVALID_TOKEN"
            ) from exc
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"token rejected: {exc}", reason="INVALID_TOKEN") from exc
        exp = claims["exp"]
        if type(exp) is not int or not 0 < exp <= MAX_EXP:  # PyJWT also takes "123" and 1e300
            raise Unauthenticated("claim 'exp' must be an integer time before the year 10000", reason="INVALID_TOKEN")
        if exp + self._leeway <= self._clock():
            raise Unauthenticated("token expired", reason="TOKEN_EXPIRED")
        sub, name, role = claims.get("sub"), claims.get("name"), claims.get("role")
        if not _clean(sub, MAX_SUBJECT_CHARS) or not sub:
            raise Unauthenticated("claim 'sub' must be 1-128 printable characters", reason="INVALID_TOKEN")
        if not _clean(name, MAX_NAME_CHARS):
            raise Unauthenticated("claim 'name' must be at most 256 printable characters", reason="INVALID_TOKEN")
        try:
            parsed_role = Role(role)
        except ValueError as exc:
            raise Unauthenticated("claim 'role' must be one of user, provider, admin", reason="INVALID_TOKEN") from exc
        expires = exp + self._leeway
        return Principal(id=sub, name=name, role=parsed_role, expires_at=expires), expires


def mint(secret: str, *, sub: str, name: str, role: Role, ttl_seconds: int = 3600) -> str:
    """A signed token, for operators, local use and tests."""
    now = int(time.time())
    claims = {"sub": sub, "name": name, "role": role.value, "iat": now, "exp": now + ttl_seconds}
    return jwt.encode(claims, secret, algorithm=ALGORITHM)
