"""Every core: `--workers N` processes of a service on one address, supervised by a parent that replaces a
worker that dies and stops them all on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from pathlib import Path

import grpc

from devtools.servers import alive, children
from tests.support.events import EventSystem, Subscription, admin_on, assert_exactly, eventually
from tests.support.helpers import uid
from tests.support.servers import ServiceProcess
from tests.support.writer import Writer

OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]
# A client connection's first bytes: the HTTP/2 preface and an empty SETTINGS frame.
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


async def keep_following(subscription: Subscription, address: str, stop: asyncio.Event) -> int:
    """Resume whenever the stream ends (its worker killed): returns how many times it had to."""
    resumes = 0
    while not stop.is_set():
        if subscription.error is not None:
            assert subscription.error.code() == grpc.StatusCode.UNAVAILABLE, subscription.error
            resumes += 1
            await subscription.open(address, resume=True, options=OWN_CONNECTION)
        await asyncio.sleep(0.05)
    return resumes


def connections_to(pid: int, port: int) -> int:
    """How many established TCP connections to local `port` process `pid` holds (its sockets' inodes, found in
    the kernel's connection tables)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            link = os.readlink(fd)
            if link.startswith("socket:["):
                inodes.add(link[len("socket:[") : -1])
    count = 0
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            established = fields[3] == "01"
            if established and int(fields[1].rsplit(":", 1)[1], 16) == port and fields[9] in inodes:
                count += 1
    return count


def workers_of(process: ServiceProcess) -> list[int]:
    assert process.process is not None
    return sorted(children(process.process.pid))


async def test_workers_share_an_address_a_killed_one_is_replaced_and_its_subscribers_miss_nothing(
    system: EventSystem, channels: list[grpc.aio.Channel]
) -> None:
    booking = system.booking(WORKERS="2")
    notify = system.notify(WORKERS="2")
    assert len(workers_of(booking)) == 2
    before = workers_of(notify)
    assert len(before) == 2
    # A connection each (no shared subchannels), which the kernel spreads over the workers.
    watchers = [Subscription("admin", uid("ops")) for _ in range(8)]
    for watcher in watchers:
        await watcher.open(notify.address, options=OWN_CONNECTION)
    stop = asyncio.Event()
    followers = [asyncio.create_task(keep_following(w, notify.address, stop)) for w in watchers]
    churn = Writer([await admin_on(booking, channels)])
    churn.start()
    try:
        await churn.until(40)
        await eventually(lambda: all(w.events for w in watchers), lambda: "a watcher got nothing")
        # The kernel spreads connections by a hash (and a worker still starting gets none): kill one that has some.
        held = {pid: connections_to(pid, notify.port) for pid in before}
        victim = max(before, key=held.__getitem__)
        assert held[victim] > 0, held
        os.kill(victim, signal.SIGKILL)
        await eventually(
            lambda: len(workers_of(notify)) == 2 and victim not in workers_of(notify),
            lambda: f"workers {workers_of(notify)} after killing {victim}",
        )
        await churn.until(churn.changes + 40)
    finally:
        changes = await churn.stop()
    committed = await system.wait_relayed(changes)
    for watcher in watchers:
        await watcher.wait_for(committed[-1][0])
    stop.set()
    resumes = await asyncio.gather(*followers)
    assert sum(resumes) >= 1, "no subscriber was on the killed worker"
    for watcher in watchers:
        assert_exactly(watcher, committed)
        await watcher.close()
    assert f"worker {victim} exited" in notify.log()

    # SIGTERM reaches every worker; the parent exits after them, within their bounded shutdown.
    running = workers_of(notify)
    started = time.monotonic()
    notify.signal(signal.SIGTERM)
    assert await asyncio.to_thread(notify.wait, 30) == 0
    assert time.monotonic() - started < 15
    assert not [pid for pid in running if alive(pid)]


async def test_workers_of_a_killed_supervisor_stop_so_the_instance_can_start_again(system: EventSystem) -> None:
    notify = system.notify(WORKERS="2")
    workers = workers_of(notify)
    assert len(workers) == 2
    notify.signal(signal.SIGKILL)  # the supervisor only, as an OOM kill would
    assert await asyncio.to_thread(notify.wait, 30) == -signal.SIGKILL
    await eventually(lambda: not [pid for pid in workers if alive(pid)], lambda: f"orphaned workers {workers} run on")
    notify.start()  # the same address: free again
    assert len(workers_of(notify)) == 2


async def test_an_instance_killed_with_its_clients_connected_starts_again_on_its_address(system: EventSystem) -> None:
    notify = system.notify(WORKERS="2")
    # Clients that close their end after the server's, as grpc-js does: the server's end lingers in TIME_WAIT.
    clients = [socket.create_connection(("127.0.0.1", notify.port)) for _ in range(4)]
    for client in clients:  # each accepted by a worker: it answers HTTP/2's preface with its SETTINGS frame
        client.settimeout(10)
        client.sendall(HTTP2_PREFACE)
        assert await asyncio.to_thread(client.recv, 9)
    for pid in workers_of(notify):  # a crash of the whole instance
        os.kill(pid, signal.SIGKILL)
    notify.signal(signal.SIGKILL)
    await asyncio.to_thread(notify.wait, 30)
    for client in clients:
        while client.recv(65536):  # to the server's FIN
            pass
        client.close()
    notify.start()  # the same address, at once
    assert len(workers_of(notify)) == 2


async def test_sigterm_while_a_replacement_waits_stops_everything_and_starts_nothing(system: EventSystem) -> None:
    notify = system.notify(WORKERS="2")
    victim, other = workers_of(notify)
    os.kill(victim, signal.SIGKILL)
    await eventually(lambda: "starting another in" in notify.log(), lambda: "the supervisor did not notice")
    notify.signal(signal.SIGTERM)  # during the replacement's backoff
    assert await asyncio.to_thread(notify.wait, 15) == 0
    assert "all workers stopped" in notify.log()
    assert not alive(other)
    assert notify.log().count("started") == 2  # no replacement was started after SIGTERM
