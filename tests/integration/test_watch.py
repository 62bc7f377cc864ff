"""BookingClient.watch() and .informer() against real services behind the balancer: every committed change
exactly once and in order across a notify instance SIGKILL, a Redis restart and a slow-consumer end; an informer
that converges to the database's state, row by row, after thousands of changes, a kill and a Redis flush."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest

import booking_client
from booking_api.booking.v1 import booking_pb2, booking_pb2_grpc, events_pb2
from booking_client import BookingClient
from devtools.cluster import Balancer
from devtools.servers import SERVICE_ROLE, as_role, free_port
from tests.support.events import EventSystem, eventually
from tests.support.helpers import Caller, fresh_slot, token, uid
from tests.support.servers import require_nginx
from tests.support.writer import Writer

pytestmark = pytest.mark.timeout(300)


class Behind:
    """One booking and two notify instances (small subscriber queues, so a slow reader is ended) behind nginx."""

    def __init__(self, system: EventSystem) -> None:
        self.system = system
        self.booking = system.booking()
        self.notifiers = [system.notify(SUBSCRIBER_QUEUE_SIZE="20") for _ in range(2)]
        self.balancer = Balancer(
            system.workdir / uid("nginx"),
            ("127.0.0.1", free_port()),
            [self.booking.address],
            [n.address for n in self.notifiers],
        )
        self.balancer.start()
        self.channel = grpc.aio.insecure_channel(self.balancer.address)

    def writer(self, loops: int = 3) -> Writer:
        """Changes of every kind through the balancer, from `loops` concurrent loops (started by the test)."""
        admin = Caller(booking_pb2_grpc.BookingServiceStub(self.channel), "admin", "ops")
        return Writer([admin], mix="mixed", loops=loops, gap=0)

    async def close(self) -> None:
        await self.channel.close()
        self.balancer.stop()

    def client(self, **options: object) -> BookingClient:
        return BookingClient(self.balancer.address, token=token("admin", "ops"), **options)  # type: ignore[arg-type]

    def slow_consumers_ended(self) -> int:
        return sum("ended=SLOW_CONSUMER" in line for n in self.notifiers for line in n.log().splitlines())


@pytest.fixture
async def behind(system: EventSystem) -> AsyncIterator[Behind]:
    require_nginx()
    made = Behind(system)
    yield made
    await made.close()


async def test_watch_yields_every_change_once_in_order_across_a_kill_a_redis_restart_and_a_slow_consumer_end(
    behind: Behind,
) -> None:
    seen: list[events_pb2.BookingEvent] = []
    reading = asyncio.Event()  # cleared: the reader stops reading
    reading.set()

    # The watch talks to one notify instance directly (a balancer's buffers would hide a slow reader for
    # megabytes), without BDP probing, so the client's receive window stays small and a slow reader holds the
    # server up soon. Writes go through the balancer.
    notifier = behind.notifiers[0]
    direct = {"notify_target": notifier.address, "channel_options": [("grpc.http2.bdp_probe", 0)]}
    async with behind.client(**direct) as client:
        watch = client.watch()

        async def read() -> None:
            async for event in watch:
                seen.append(event)
                await reading.wait()  # when cleared, it falls behind a queue of 20: ended as SLOW_CONSUMER

        reader = asyncio.create_task(read())
        await asyncio.wait_for(watch.started.wait(), 30)  # subscribed: the writes below come after it
        writers = behind.writer()
        writers.start()
        try:
            await writers.until(30)
            await eventually(lambda: len(seen) >= 10, lambda: "no events yet")
            # 1: the instance is SIGKILLed, changes go on, it comes back on the same address.
            notifier.signal(signal.SIGKILL)
            notifier.wait()
            await writers.until(writers.changes + 20)
            await asyncio.to_thread(notifier.start)
            # 2: Redis restarts (its data kept).
            await asyncio.to_thread(behind.system.redis.stop)
            await writers.until(writers.changes + 10)  # changes made while it is down
            await asyncio.to_thread(behind.system.redis.start)
            await writers.until(writers.changes + 30)
            # 3: once the watch has caught up (a resumed stream replaying history is read at the reader's own
            # pace, so only a live subscriber can fall behind), the reader stops reading while 600 changes of
            # ~2 KB events are made (more than its connection's buffers and its queue of 20 hold): the server
            # gives up on it, and ends the stream once it reads again.
            await writers.pause()
            newest = (await behind.system.wait_relayed(writers.changes))[-1][0]
            await eventually(lambda: bool(seen) and seen[-1].event_id == newest, lambda: "the watch is behind")
            writers.notes = "n" * 2000
            reading.clear()
            writers.going.set()
            await writers.until(writers.changes + 600)
            reading.set()
            await eventually(lambda: behind.slow_consumers_ended() > 0, lambda: "not ended as a slow consumer", 60)
            await writers.until(writers.changes + 20)
        finally:
            changes = await writers.stop()
        assert not writers.failures, writers.failures
        expected = [event_id for event_id, _, _ in await behind.system.wait_relayed(changes)]
        await eventually(lambda: len(seen) >= len(expected), lambda: f"{len(seen)} of {len(expected)} events", 60)
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    assert [e.event_id for e in seen] == expected  # every one, once, in stream order


async def test_watch_raises_cursor_expired_when_the_stream_cannot_continue(behind: Behind) -> None:
    async with behind.client() as client:
        with pytest.raises(booking_client.CursorExpired):
            async for _ in client.watch(resume_after="1-999999999"):
                pass


async def visible_rows(database_url: str, *, deleted: bool = False) -> dict[str, tuple[str, str, str, str, bool]]:
    """What an admin may see (soft-deleted bookings too if `deleted`), as stored: id -> (etag, provider,
    customer, start, deleted)."""
    conn = await asyncpg.connect(as_role(database_url, SERVICE_ROLE))
    try:
        rows = await conn.fetch(
            "SELECT id, version, provider_id, customer_id, start_time, delete_time IS NOT NULL AS deleted"
            " FROM bookings WHERE $1 OR delete_time IS NULL",
            deleted,
        )
    finally:
        await conn.close()
    return {
        str(r["id"]): (
            f'"{r["version"]}"',
            r["provider_id"],
            r["customer_id"],
            r["start_time"].isoformat(),
            r["deleted"],
        )
        for r in rows
    }


def cached(booking: booking_pb2.Booking) -> tuple[str, str, str, str, bool]:
    start = booking.start_time.ToDatetime().isoformat() + "+00:00"
    return booking.etag, booking.provider_id, booking.customer_id, start, booking.HasField("delete_time")


async def test_the_informer_converges_to_the_database_after_thousands_of_changes_a_kill_and_a_redis_flush(
    behind: Behind,
) -> None:
    async with (
        behind.client() as client,
        client.informer() as informer,
        client.informer(show_deleted=True) as everything,
    ):
        await asyncio.wait_for(informer.wait_synced(), 30)
        await asyncio.wait_for(everything.wait_synced(), 30)
        changes: list[booking_client.Change] = []

        async def record() -> None:
            async for change in everything.changes():
                changes.append(change)

        recorder = asyncio.create_task(record())
        writers = behind.writer(loops=4)
        writers.start()
        try:
            await writers.until(600)
            behind.notifiers[0].signal(signal.SIGKILL)
            behind.notifiers[0].wait()
            await writers.until(1200)
            await asyncio.to_thread(behind.notifiers[0].start)
            # Redis loses its data, with changes the informers have not seen, and both instances restart: they
            # only know events after the flush, so the informers' cursors cannot be honoured anywhere
            # (CURSOR_EXPIRED) and they must list again. (Had the informers seen every change before the flush,
            # the next event would follow their cursors, and resuming would rightly need no list.)
            await writers.pause()
            for notifier in behind.notifiers:
                notifier.signal(signal.SIGKILL)
                notifier.wait()
            writers.going.set()
            await writers.until(writers.changes + 20)
            await writers.pause()
            unseen = await behind.system.wait_relayed(1)
            await behind.system.wait_published(unseen[-1][0])
            await behind.system.flush_redis()
            for notifier in behind.notifiers:
                await asyncio.to_thread(notifier.start)
            writers.going.set()
            await writers.until(2000, within=240)
        finally:
            await writers.stop()
        assert not writers.failures, writers.failures
        expected = await visible_rows(behind.system.database_url)
        expected_all = await visible_rows(behind.system.database_url, deleted=True)

        def converged() -> bool:
            return {b.id: cached(b) for b in informer.items()} == expected and {
                b.id: cached(b) for b in everything.items()
            } == expected_all

        await eventually(converged, lambda: f"cache {len(informer.items())} rows, database {len(expected)}", 60)
        assert len(expected_all) > len(expected) > 100
        recorder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await recorder
    assert informer.lists >= 2 and everything.lists >= 2, "the Redis flush did not make the informers list again"
    assert changes, "no change was reported"
    assert {c.kind for c in changes} == {"added", "updated", "removed"}
    # Updates flowed through as UPDATED events: a change of notes alone, with the state before it.
    assert any(c.kind == "updated" and c.previous is not None and c.previous.notes != c.booking.notes for c in changes)


async def test_a_watch_broken_before_its_first_event_still_misses_nothing(behind: Behind) -> None:
    """Before any event arrives, the watch's cursor is the start position the server named (x-stream-position):
    changes made while no instance can be reached are delivered after it resumes, not skipped."""
    async with behind.client() as client:
        await behind.writer().create()
        await behind.system.wait_relayed(1)  # the instances now have a position to name
        seen: list[events_pb2.BookingEvent] = []
        watch = client.watch()

        async def read() -> None:
            async for event in watch:
                seen.append(event)

        reader = asyncio.create_task(read())
        await asyncio.wait_for(watch.started.wait(), 30)  # subscribed, no event yet
        assert not seen
        for notifier in behind.notifiers:
            notifier.signal(signal.SIGKILL)
            notifier.wait()
        writer = behind.writer()
        made = [await writer.create() for _ in range(3)]
        for notifier in behind.notifiers:
            await asyncio.to_thread(notifier.start)
        await eventually(lambda: len(seen) >= 3, lambda: f"{len(seen)} of the 3 changes made while away", 30)
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    assert [e.booking.id for e in seen] == [b.id for b in made]


async def test_an_informer_reader_that_falls_behind_holds_one_change_per_booking_at_its_latest(
    behind: Behind,
) -> None:
    provider = uid("prov")
    async with behind.client() as client, client.informer(provider_id=provider) as informer:
        await asyncio.wait_for(informer.wait_synced(), 30)
        changes = informer.changes()  # a reader from now on, that reads nothing while the bookings change

        async def create() -> booking_pb2.Booking:
            start, end = fresh_slot()
            return await client.create_booking(
                service_id="haircut", provider_id=provider, customer_id="c", start_time=start, end_time=end
            )

        made = [await create() for _ in range(3)]
        for _ in range(10):
            for booking in made:
                await client.delete_booking(booking.id, reason="churn")
                await client.restore_booking(booking.id)
        await client.delete_booking(made[0].id, reason="gone")
        await client.hard_delete_booking(made[0].id)
        latest = {b.id: await client.get_booking(b.id) for b in made[1:]}
        await eventually(
            lambda: {b.id: b for b in informer.items()} == latest, lambda: f"cache {informer.items()}, not {latest}"
        )
        assert len(changes) == 2  # not the 64 changes the cache went through
        read = [await asyncio.wait_for(anext(changes), 5) for _ in range(2)]
    assert [(c.kind, c.booking) for c in read] == [("added", latest[b.id]) for b in made[1:]]


async def test_a_watch_started_again_from_the_cursor_a_caller_kept_goes_on_where_it_stopped(behind: Behind) -> None:
    async with behind.client() as client:
        watch = client.watch()
        first = asyncio.ensure_future(anext(watch))
        await asyncio.wait_for(watch.started.wait(), 30)
        writer = behind.writer()
        made = [await writer.create() for _ in range(4)]
        seen = [await asyncio.wait_for(first, 30), await asyncio.wait_for(anext(watch), 30)]
        kept = watch.cursor  # as a caller would store it before it stops
        assert kept == seen[-1].event_id
        await watch.aclose()
        again = client.watch(resume_after=kept)
        seen += [await asyncio.wait_for(anext(again), 30) for _ in range(2)]
    assert [e.booking.id for e in seen] == [b.id for b in made]
