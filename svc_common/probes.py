"""One connection to each dependency, for `--check-config --probe` (svc_common.cli): what answered, or the
error that says why not. Each returns a short description of what answered."""

from __future__ import annotations

from svc_common.postgres import Connector
from svc_common.redis_client import RedisConfig, connect
from svc_common.settings import redact_url


async def postgres(url: str) -> str:
    conn = await Connector(url)()
    try:
        version = await conn.fetchval("SHOW server_version")
        user = await conn.fetchval("SELECT current_user")
    finally:
        await conn.close()
    return f"PostgreSQL {version} at {redact_url(url)}, as {user}"


async def redis(config: RedisConfig) -> str:
    client = connect(config)
    try:
        info = await client.info("server")
        role = (await client.info("replication")).get("role", "unknown")
    finally:
        await client.aclose()
    return f"Redis {info.get('redis_version', '?')} at {redact_url(config.url)}, {role}"
