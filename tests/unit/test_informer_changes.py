"""booking_client.Changes: a reader of an informer's changes that falls behind holds one change per booking,
merged so that reading it leads from what the reader last saw to the booking's latest state."""

from __future__ import annotations

import asyncio

import pytest

from booking_api.booking.v1 import booking_pb2
from booking_client import Change, Changes


def booking(booking_id: str, version: int) -> booking_pb2.Booking:
    return booking_pb2.Booking(id=booking_id, etag=f'"{version}"')


async def read_all(changes: Changes) -> list[tuple[str, str, str]]:
    read: list[tuple[str, str, str]] = []
    while len(changes):
        change = await asyncio.wait_for(anext(changes), 5)
        read.append((change.kind, change.booking.id, change.booking.etag))
    return read


@pytest.mark.parametrize(
    ("kinds", "expected"),
    [
        (["added"], [("added", 2)]),
        (["added", "updated", "updated"], [("added", 4)]),  # still new to the reader, at its latest
        (["added", "updated", "removed"], []),  # came and went unseen
        (["updated", "updated"], [("updated", 3)]),
        (["updated", "removed"], [("removed", 3)]),
        (["removed", "added"], [("updated", 3)]),  # back: the reader knew it before
        (["removed", "added", "updated", "removed"], [("removed", 5)]),
    ],
)
async def test_changes_to_one_booking_merge_into_the_one_that_leads_to_its_latest_state(
    kinds: list[str], expected: list[tuple[str, int]]
) -> None:
    changes = Changes()
    for offset, kind in enumerate(kinds):
        changes.put(Change(kind, booking("b1", 2 + offset)))  # type: ignore[arg-type]
    assert await read_all(changes) == [(kind, "b1", f'"{version}"') for kind, version in expected]


async def test_a_reader_far_behind_holds_one_change_per_booking_in_the_order_they_first_waited() -> None:
    changes = Changes()
    for version in range(1, 1001):
        for booking_id in ("b1", "b2", "b3"):
            changes.put(Change("added" if version == 1 else "updated", booking(booking_id, version)))
    assert len(changes) == 3
    assert await read_all(changes) == [("added", b, '"1000"') for b in ("b1", "b2", "b3")]


async def test_the_error_that_ended_the_informer_comes_after_the_changes_before_it() -> None:
    changes = Changes()
    changes.put(Change("added", booking("b1", 1)))
    changes.fail(RuntimeError("ended"))
    assert (await anext(changes)).booking.id == "b1"
    with pytest.raises(RuntimeError, match="ended"):
        await asyncio.wait_for(anext(changes), 5)


async def test_two_updates_merged_lead_from_the_state_the_reader_saw_before_the_first() -> None:
    changes = Changes()
    changes.put(Change("updated", booking("b1", 2), previous=booking("b1", 1)))
    changes.put(Change("updated", booking("b1", 3), previous=booking("b1", 2)))
    merged = await asyncio.wait_for(anext(changes), 5)
    assert (merged.kind, merged.booking.etag) == ("updated", '"3"')
    assert merged.previous is not None and merged.previous.etag == '"1"'
