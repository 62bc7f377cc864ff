"""Schema set-up when many instances start at once: migrations and the service role's grants run under one
advisory lock, so eight sessions preparing an empty database together apply each migration once and none fails
(concurrent GRANTs on one table fail with `tuple concurrently updated` otherwise)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest

from booking_service import schema
from devtools.servers import OWNER_ROLE, SERVICE_ROLE, as_role

MIGRATIONS = len(list((Path(__file__).parents[2] / "booking_service" / "migrations").glob("*.sql")))


@pytest.mark.parametrize("round_", range(5))  # the race is a matter of timing: five tries at it
async def test_eight_instances_preparing_an_empty_database_at_once_migrate_once_without_an_error(
    new_database: Callable[[], str], round_: int
) -> None:
    url = new_database()
    services = [await asyncpg.connect(as_role(url, SERVICE_ROLE)) for _ in range(8)]
    try:
        results = await asyncio.gather(
            *(schema.prepare(conn, as_role(url, OWNER_ROLE)) for conn in services), return_exceptions=True
        )
        failures = [repr(result) for result in results if isinstance(result, BaseException)]
        assert not failures, failures
        assert sorted(len(applied) for applied in results) == [0] * 7 + [MIGRATIONS]  # type: ignore[arg-type]
        # The service role got its privileges: it can write a booking's outbox row and read the audit trail.
        assert await services[0].fetchval("SELECT has_table_privilege('booking_outbox', 'INSERT')")
        assert await services[0].fetchval("SELECT count(*) FROM booking_audit") == 0
    finally:
        for conn in services:
            await conn.close()
