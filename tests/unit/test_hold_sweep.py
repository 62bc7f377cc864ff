"""The hold sweep's loop on its own (booking_service.server), with use cases standing in for a database that goes
down and comes back: it keeps sweeping, and says so once when it starts failing and once when it works again."""

from __future__ import annotations

import asyncio
import logging

import pytest

from booking_service.server import _sweep_holds_periodically
from svc_common.errors import Unavailable
from tests.support.events import eventually


class Flaky:
    """Fails the 2nd to 5th sweep as an unreachable database does, then retires one hold a sweep."""

    def __init__(self) -> None:
        self.calls = 0

    async def sweep_holds(self) -> int:
        self.calls += 1
        if 2 <= self.calls <= 5:
            raise Unavailable("the database is unreachable")
        return 1


async def test_an_outage_is_logged_once_when_it_starts_and_once_when_it_ends(caplog: pytest.LogCaptureFixture) -> None:
    flaky = Flaky()
    caplog.set_level(logging.DEBUG, logger="booking_service.server")
    sweeping = asyncio.create_task(_sweep_holds_periodically(flaky, 0.001))  # type: ignore[arg-type]
    try:
        await eventually(lambda: flaky.calls >= 8, lambda: f"{flaky.calls} sweeps", within=5)
    finally:
        sweeping.cancel()
        await asyncio.gather(sweeping, return_exceptions=True)
    said = [(r.levelname, r.getMessage().split(":")[0]) for r in caplog.records if "sweep" in r.getMessage()]
    assert ("WARNING", "hold sweep failed") in said and said.count(("WARNING", "hold sweep failed")) == 1, said
    assert said.count(("INFO", "hold sweep works again")) == 1, said
