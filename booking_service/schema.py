"""The database schema: migrations (`migrations/*.sql`, applied in name order, once) and the privileges of the
role the service runs as.

Two roles, least privilege: an owner role owns the tables and applies the migrations; the service's role
(DATABASE_URL) may read and write bookings and the outbox, but only read and append to the audit trail. It
cannot update, delete, truncate or disable the triggers of `booking_audit`; erasing a hard-deleted booking's
snapshots, and its notes from its change events, goes through owner-defined functions
(`booking_audit_erase_snapshots`, `booking_events_erase_notes`), which only erase what belongs to bookings that
are deleted. With MIGRATION_DATABASE_URL unset, the service's role applies the migrations and
so owns everything (simple, not least privilege).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

import asyncpg

from svc_common.postgres import DEFAULT_CONNECT_TIMEOUT_SECONDS, Connector

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
MIGRATION_LOCK_ID = 0x6B6F6F62  # pg_advisory_lock key shared by every instance

# What the service's role may do (idempotent; applied by the owner after every migration run).
SERVICE_GRANTS = (
    "GRANT SELECT ON schema_migrations TO {role}",
    "GRANT SELECT, INSERT, UPDATE, DELETE ON bookings, booking_outbox TO {role}",
    "GRANT SELECT, UPDATE ON booking_outbox_state TO {role}",
    "GRANT SELECT, INSERT ON booking_audit, booking_outbox_dead TO {role}",
    "GRANT SELECT, INSERT, UPDATE ON provider_schedules TO {role}",
    "GRANT SELECT, INSERT ON provider_schedule_audit TO {role}",
    "GRANT EXECUTE ON FUNCTION booking_audit_erase_snapshots(uuid[]) TO {role}",
    "GRANT EXECUTE ON FUNCTION booking_events_erase_notes(uuid[]) TO {role}",
    "GRANT EXECUTE ON FUNCTION booking_unexpired_holds(text, text) TO {role}",
)


async def _pending(conn: Conn) -> list[Path]:
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    done = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")} if exists else set()
    return [path for path in sorted(MIGRATIONS_DIR.glob("*.sql")) if path.name not in done]


@contextlib.asynccontextmanager
async def _locked(conn: Conn) -> AsyncIterator[None]:
    """Hold the migration lock (one instance at a time, across instances) while the block runs."""
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
    try:
        yield
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)


async def _apply(conn: Conn) -> list[str]:
    applied = []
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
    )
    for path in await _pending(conn):
        async with conn.transaction():
            await conn.execute(path.read_text())
            await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", path.name)
        applied.append(path.name)
    return applied


async def migrate(conn: Conn) -> list[str]:
    """Apply pending migrations on `conn`, serialised across instances by an advisory lock; returns what it
    applied."""
    async with _locked(conn):
        return await _apply(conn)


async def grant_service_role(conn: Conn, role: str) -> None:
    """Give `role` exactly what the service needs (run as the owner)."""
    quoted = await conn.fetchval("SELECT quote_ident($1)", role)
    for statement in SERVICE_GRANTS:
        await conn.execute(statement.format(role=quoted))


async def prepare(
    service: Conn, owner_dsn: str | None, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_SECONDS
) -> list[str]:
    """Bring the schema up to date: as the owner (`owner_dsn`), then granting the service's role (the user of
    `service`) its privileges; or, without an owner, as the service's role itself. Returns what was applied.
    Both under the migration lock: instances starting together would otherwise grant at once, and PostgreSQL
    refuses concurrent GRANTs on one table (`tuple concurrently updated`)."""
    if owner_dsn is None:
        return await migrate(service)
    owner = await Connector(owner_dsn, connect_timeout)(command_timeout=60)
    try:
        role = await service.fetchval("SELECT current_user")
        async with _locked(owner):
            applied = await _apply(owner)
            if role != await owner.fetchval("SELECT current_user"):
                await grant_service_role(owner, role)
    finally:
        await owner.close()
    return applied
