"""deploy/postgres/init.sql, as the postgres image runs it on a new volume, then booking as compose starts it:
the owner role migrates, the service's role serves, and the service's role cannot change the schema."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import grpc
import pytest

from devtools.servers import PostgresServer
from tests.support.events import admin_on
from tests.support.helpers import uid
from tests.support.servers import PROJECT, ServiceProcess, booking_env

pytestmark = pytest.mark.timeout(120)


async def test_compose_database_roles_from_init_sql_run_the_booking_service(
    redis_url: str, workdir: Path, channels: list[grpc.aio.Channel]
) -> None:
    server = PostgresServer(workdir / uid("postgres"), durable=False)  # (tmp_path: mode 700, unreachable as postgres)
    server.start()
    try:
        conn = await asyncpg.connect(server.url)
        try:
            await conn.execute("CREATE DATABASE booking")  # what POSTGRES_DB makes before the init scripts
        finally:
            await conn.close()
        conn = await asyncpg.connect(server.url_for("booking"))
        try:
            await conn.execute((PROJECT / "deploy" / "postgres" / "init.sql").read_text())
        finally:
            await conn.close()
        host = f"127.0.0.1:{server.port}/booking"
        env = {
            **booking_env(server.url_for("booking"), redis_url),
            "DATABASE_URL": f"postgresql://booking_app@{host}",
            "MIGRATION_DATABASE_URL": f"postgresql://booking_owner@{host}",
        }
        booking = ServiceProcess("booking_service", env, workdir)
        booking.start()
        try:
            admin = await admin_on(booking, channels)
            made = await admin.create(provider_id=uid("prov"), customer_id=uid("cust"))
            assert (await admin.get(made.id)).id == made.id
        finally:
            booking.stop()
        app = await asyncpg.connect(f"postgresql://booking_app@{host}")
        try:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await app.execute("DROP TABLE bookings")
        finally:
            await app.close()
    finally:
        server.stop("immediate")
