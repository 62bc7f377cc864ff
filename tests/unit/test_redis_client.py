"""The services' Redis clients (svc_common.redis_client): how their replies are parsed."""

from __future__ import annotations

import pytest
from redis._parsers import _AsyncHiredisParser

from svc_common.redis_client import RedisConfig, connect


@pytest.mark.parametrize("url", ["redis://127.0.0.1:1/0", "redis+sentinel://127.0.0.1:1/primary"])
def test_replies_are_parsed_by_hiredis_on_plain_and_sentinel_managed_clients(url: str) -> None:
    # redis-py falls back to its pure-Python parser, silently, when hiredis is missing: a history read of 1,000
    # entries then costs 24 times the CPU (docs/benchmarks.md). The parser is chosen per connection, made here
    # without connecting.
    client = connect(RedisConfig(url=url))
    connection = client.connection_pool.make_connection()  # type: ignore[no-untyped-call]
    assert isinstance(connection._parser, _AsyncHiredisParser)
