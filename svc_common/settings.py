"""Helpers to read settings from an environment mapping (each service builds one frozen Settings from them)."""

from __future__ import annotations

from collections.abc import Mapping


class SettingsError(ValueError):
    pass


def require(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise SettingsError(f"environment variable {name} is required")
    return value


def text(env: Mapping[str, str], name: str, default: str) -> str:
    return env.get(name, "").strip() or default


def number(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from exc


def integer(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from exc


def secret(env: Mapping[str, str], name: str, *, min_bytes: int) -> str:
    value = require(env, name)
    if len(value.encode()) < min_bytes:
        raise SettingsError(f"{name} must be at least {min_bytes} bytes (HS256 keys shorter than that are weak)")
    return value
