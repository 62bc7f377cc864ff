"""Fan-out of stream events to this instance's subscribers. Imports nothing from grpc or redis.

The stream reader hands every event to `Hub.dispatch` once; each event's response bytes are made once,
however many subscribers get them, and a subscriber's next response carries every event waiting for it
(within `BatchLimits`), so a grpc write is paid per batch, not per event. Every subscriber has a position in
the stream, and each event must follow the one before it (event seqs have no gaps), so a subscriber never skips
an event unnoticed: a gap (history trimmed, or lost with Redis's data) ends its stream with OUT_OF_RANGE
`CURSOR_EXPIRED`. A subscriber at the hub's position shares it, and is offered only the events its route
(customer, provider, booking, or any) may bring it, so an event costs nothing for the subscribers it does not
concern; one elsewhere (catching up) keeps a position of its own and checks every event until it reaches the
hub's (docs/architecture.md, Routing).

The hub also keeps the most recent events it dispatched (`recent`, a bounded window, contiguous in seq), so
subscribers resuming from a recent cursor (a notify instance died, a client reconnected) catch up from memory
without reading Redis at all. When it dispatches a HARD_DELETED event, it erases that booking's notes from the
events it remembers, in the same step (svc_common.eventstream: erasure).

For the hop metrics (notify_service.metrics), each dispatch is a `Round`: when its events were read, and which
subscribers still owe a write of some of them, so the first and the last write that carry them are timed
(a few operations per write; nothing is timed per event on the write path).

A subscriber's queue is bounded: one that still holds `max_queue` undelivered events when the next batch
arrives from Redis is ended with RESOURCE_EXHAUSTED `SLOW_CONSUMER` (so it holds at most `max_queue` plus one
batch), and dispatching never waits for it.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from itertools import chain, islice
from typing import Any

from google.protobuf.message import DecodeError

from booking_api.notify.v1 import notify_pb2
from svc_common.errors import OutOfRange, ResourceExhausted, ServiceError
from svc_common.eventstream import EventId
from svc_common.outbox import change_of
from svc_common.scope import Scope

DEFAULT_WINDOW = 10_000  # recent events a hub keeps for subscribers that resume


@dataclass(frozen=True, slots=True)
class Event:
    """One stream entry: its id, whose booking it is about, and the response that carries it, serialized
    (None for an entry that only holds its place in the stream: it advances positions and is never delivered)."""

    id: EventId
    customer_id: str
    provider_id: str
    booking_id: str
    payload: bytes | None
    erases: bool = False  # a HARD_DELETED event: its booking's earlier events lose their notes
    seam: bool = False  # a seam: positions jump here on purpose (svc_common.eventstream); never delivered
    # After a seam: the id this instance dispatched the same change under before it (the old primary placed it,
    # the new one again): not delivered again to a subscriber that passed that id (Subscriber.crossed_from).
    repeats: EventId | None = None
    public: bool = False  # a provider schedule's change: any caller may see it (EventFilter.matches)

    def continues(self, previous: EventId) -> bool:
        """Whether this entry comes next after `previous`, with nothing missing in between."""
        return self.id.continues(previous, seam=self.seam)

    def change(self) -> str:
        """What tells this change from others whatever its position (svc_common.outbox.change_key; "" for an
        entry without an event). Parsed from the payload: asked only around a seam, never on the hot path."""
        if self.payload is None:
            return ""
        try:
            carried = notify_pb2.SubscribeResponse.FromString(self.payload).events
        except DecodeError:  # not one of ours (the reader makes every payload): nothing to compare it by
            return ""
        return change_of(carried[0]) if carried else ""


def already_had(repeated: EventId, crossed_from: EventId | None) -> bool:
    """Whether a reader that passed a seam from `crossed_from` (None: it passed none) had the change the event
    after it repeats (dispatched before the seam as `repeated`): a live one did, one that came to the seam
    through the stream (which never held it: it was read from the lost outbox) did not."""
    return crossed_from is not None and repeated.seq <= crossed_from.seq


def without_notes(event: Event) -> Event:
    """`event` as a hard delete leaves it: its booking's notes erased."""
    if event.payload is None:
        return event
    response = notify_pb2.SubscribeResponse.FromString(event.payload)
    for carried in response.events:
        carried.booking.ClearField("notes")
    return replace(event, payload=response.SerializeToString())


@dataclass(frozen=True, slots=True)
class EventFilter:
    """The events one subscriber receives: its scope, narrowed by the request's filters (None: any)."""

    scope: Scope
    customer_id: str | None = None
    provider_id: str | None = None
    booking_id: str | None = None

    def matches(self, event: Event) -> bool:
        if event.public:  # a schedule's change: anyone may read schedules; a booking filter wants none
            return (
                event.payload is not None
                and self.booking_id is None
                and (self.provider_id is None or event.provider_id == self.provider_id)
            )
        return (
            event.payload is not None
            and self.scope.allows(event.customer_id, event.provider_id)
            and (self.customer_id is None or event.customer_id == self.customer_id)
            and (self.provider_id is None or event.provider_id == self.provider_id)
            and (self.booking_id is None or event.booking_id == self.booking_id)
        )


Route = tuple[str, str | None]  # what a subscriber is found by: ("c", customer), ("p", provider), ("b", booking)
ANY: Route = ("*", None)  # a subscriber that may match any event (an admin's stream without filters)


def route_of(event_filter: EventFilter) -> Route:
    """The narrowest route by which every event `event_filter` matches reaches it (public events aside: those go
    to every subscriber, Hub.dispatch)."""
    scope = event_filter.scope
    customer = event_filter.customer_id if event_filter.customer_id is not None else scope.customer_id
    if customer is not None:
        return ("c", customer)
    provider = event_filter.provider_id if event_filter.provider_id is not None else scope.provider_id
    if provider is not None:
        return ("p", provider)
    if event_filter.booking_id is not None:
        return ("b", event_filter.booking_id)
    return ANY


def _routes_to(event: Event) -> tuple[Route, ...]:
    """The routes of the subscribers `event` may reach (none, for an entry without an event)."""
    if event.payload is None:
        return ()
    return (("c", event.customer_id), ("p", event.provider_id), ("b", event.booking_id), ANY)


def cursor_expired(after: EventId | None) -> OutOfRange:
    return OutOfRange(
        "events after this cursor are no longer available (trimmed, or lost by Redis); re-read the bookings with "
        "ListBookings and subscribe again without resume_after",
        reason="CURSOR_EXPIRED",
        metadata={"resume_after": str(after)} if after else {},
    )


@dataclass(frozen=True)
class BatchLimits:
    """How much one response may carry (a single event larger than max_bytes still goes, alone)."""

    max_events: int = 256
    max_bytes: int = 256 * 1024


def take_batch(queue: list[bytes], limits: BatchLimits) -> bytes:
    """One response from the front of a non-empty queue of single-event responses: as many as wait, within
    `limits`, concatenated (protobuf appends repeated fields, so the events stay in order; nothing is
    serialized again), taken off the queue (one move of the pointers behind them: at most 8 bytes per event a
    subscriber may fall behind, SUBSCRIBER_QUEUE_SIZE)."""
    first = queue[0]
    waiting = len(queue)
    if waiting == 1:
        queue.clear()
        return first  # at low load, the common case: no copy
    count, size = 1, len(first)
    while count < waiting and count < limits.max_events and size + len(queue[count]) <= limits.max_bytes:
        size += len(queue[count])
        count += 1
    batch = b"".join(queue[:count])
    del queue[:count]
    return batch


class Round:
    """One dispatch of events read together: when they were read (time.monotonic()) and from where, how many
    subscribers still owe a write that carries some of them, when the first such write started (its response
    handed to grpc, which sends it from there) and when the last one ended."""

    __slots__ = ("first", "last", "pending", "read_at", "report", "source")

    def __init__(self, read_at: float, source: str, report: Callable[[Round], None]) -> None:
        self.read_at = read_at
        self.source = source
        self.report = report  # told once, when no subscriber owes a write any more (if any write ended)
        self.pending = 0
        self.first: float | None = None
        self.last: float | None = None

    def written(self, now: float) -> None:
        self.last = now
        self.settled()

    def settled(self) -> None:
        """One subscriber owes nothing more of this round (written, or gone)."""
        self.pending -= 1
        if self.pending == 0 and self.last is not None:
            self.report(self)


class Subscriber:
    __slots__ = (
        "_following",
        "_last",
        "_owed",
        "_queue",
        "_taken",
        "_waiter",
        "crossed_from",
        "delivered",
        "failure",
        "filter",
        "limits",
        "max_queue",
        "reported",
        "responses",
    )

    def __init__(
        self, event_filter: EventFilter, last: EventId | None, max_queue: int, limits: BatchLimits = BatchLimits()
    ) -> None:
        self.filter = event_filter
        self._last = last  # the last event offered to it (delivered or filtered out); None: take any next one
        self._following: Hub | None = None  # the hub whose position is this subscriber's (Hub: routing)
        self.max_queue = max_queue  # events, whatever the responses they go out in
        self.limits = limits
        self.failure: ServiceError | None = None
        self.crossed_from: EventId | None = None  # where it was when it passed the last seam (None: it did not)
        self.delivered = 0  # events handed out in responses, and those responses (for the metrics)
        self.responses = 0
        self.reported = (0, 0)  # (delivered, responses) as far as the metrics have counted them
        # Lists, not deques: an idle subscriber's empty list costs 56 bytes where a deque allocates its first
        # block (about 600) at once; a response takes its events off the front in one step (take_batch).
        self._queue: list[bytes] = []
        # Set when something is queued or the subscription fails. A bare future, not an asyncio.Event: the
        # dispatch wakes every subscriber per event, and an Event's wait and set cost 0.5 us more per delivery.
        self._waiter: asyncio.Future[None] | None = None
        self._owed: list[list[Any]] = []  # [round, events of it still queued], oldest first
        self._taken: list[Round] = []  # the rounds the response being written completes

    @property
    def last(self) -> EventId | None:
        """The last event offered to it, or passed over for it (None: it takes any next one)."""
        following = self._following
        return following.last if following is not None else self._last

    @last.setter
    def last(self, position: EventId | None) -> None:
        self._following = None
        self._last = position

    def offer(self, events: list[Event], round_: Round | None = None) -> None:
        """Queue what this subscriber should get of `events` (a batch read from the stream, in order, timed as
        `round_`)."""
        if self.failure is not None:
            return
        if self._overflowing():
            return
        queued = 0
        last = self.last
        for event in events:
            if last is not None:  # Event.continues, inline on the hot path
                if event.seam:
                    if event.id.seq <= last.seq:  # passed already (while catching up from history)
                        continue
                    self.crossed_from = last
                elif event.id <= last:  # already seen (while catching up from history)
                    continue
                elif not event.id.follows(last):
                    self.last = last
                    self.fail(cursor_expired(last))
                    return
            last = event.id
            if event.repeats is not None and already_had(event.repeats, self.crossed_from):
                continue
            if self.filter.matches(event):
                self._queue.append(event.payload)  # type: ignore[arg-type]  # matches() excludes None
                queued += 1
        self.last = last
        if queued:
            self._queued(queued, round_)

    def take(self, events: list[Event], round_: Round | None) -> None:
        """Queue what it should get of `events` when it is at the hub's position and they follow it (Hub: routing):
        `offer` without the position checks."""
        if self.failure is not None or self._overflowing():
            return
        queued = 0
        matches = self.filter.matches
        for event in events:
            if matches(event):
                self._queue.append(event.payload)  # type: ignore[arg-type]  # matches() excludes None
                queued += 1
        if queued:
            self._queued(queued, round_)

    def _overflowing(self) -> bool:
        """Whether it still holds `max_queue` undelivered events as more arrive: then it is ended (SLOW_CONSUMER)."""
        if len(self._queue) < self.max_queue:
            return False
        self.fail(
            ResourceExhausted(
                f"the subscriber fell more than {self.max_queue} events behind; resume from the last event_id received",
                reason="SLOW_CONSUMER",
            )
        )
        return True

    def _queued(self, queued: int, round_: Round | None) -> None:
        self._wake()
        if round_ is not None:
            round_.pending += 1
            self._owed.append([round_, queued])

    def _wake(self) -> None:
        """Wake next() if it waits."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def fail(self, error: ServiceError) -> None:
        """End this subscription with `error` (what was still queued is dropped: the client resumes)."""
        if self.failure is None:
            self.failure = error
            self._queue.clear()
            self._wake()
            for entry in self._owed:  # what was queued will never be written: the rounds need not wait for it
                entry[0].settled()
            self._owed.clear()

    async def next(self) -> bytes:
        """The next response to send: every event queued by now, within the batch limits; raises the failure
        once the subscription has failed."""
        while not self._queue:
            if self.failure is not None:
                raise self.failure
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter  # a waiter left done (or cancelled with the call) is never set again
        if self.failure is not None:
            raise self.failure
        waiting = len(self._queue)
        batch = take_batch(self._queue, self.limits)
        taken = waiting - len(self._queue)
        self.delivered += taken
        self.responses += 1
        owed = self._owed
        now = 0.0
        done = 0
        # The rounds whose events this response carries (settled: those of their last), taken off at the end.
        while taken and done < len(owed):
            entry = owed[done]
            if entry[0].first is None:  # the round's first write starts now
                entry[0].first = now = now or time.monotonic()
            if entry[1] <= taken:
                taken -= entry[1]
                self._taken.append(entry[0])
                done += 1
            else:
                entry[1] -= taken
                taken = 0
        if done:
            del owed[:done]
        return batch

    def written(self) -> None:
        """The response `next()` returned has been written."""
        if self._taken:
            now = time.monotonic()
            for round_ in self._taken:
                round_.written(now)
            self._taken.clear()

    def release(self) -> None:
        """The subscription ended: it owes no round anything more."""
        for round_ in self._taken:
            round_.settled()
        for entry in self._owed:
            entry[0].settled()
        self._taken.clear()
        self._owed.clear()


class Hub:
    """The subscribers of this instance, the stream position the reader has dispatched up to, and the most
    recent `window` events (contiguous in seq) for subscribers that catch up."""

    def __init__(self, window: int = DEFAULT_WINDOW, on_written: Callable[[Round], None] | None = None) -> None:
        self.last: EventId | None = None
        self._on_written = on_written  # told of each round once its subscribers have been written
        # Set once the reader has found where it follows the stream from: before that, a subscriber has no
        # position to start after (the reader's first read may land after events it was meant to get).
        self.positioned = asyncio.Event()
        self._subscribers: set[Subscriber] = set()
        # Routing: a subscriber at the hub's position is offered only the events it may match, found by its route
        # (route_of); one elsewhere (catching up, or ahead after history) is offered every event (`_stepping`)
        # until it is at the hub's position again.
        self._routes: dict[Route, set[Subscriber]] = {}
        self._stepping: set[Subscriber] = set()
        self._closing: ServiceError | None = None
        self._recent: deque[Event] = deque(maxlen=window)
        # The changes dispatched before the last seam (those the window held), with their ids: a primary that
        # took over places again the changes it got the commits of but not the placing (Event.repeats). It places
        # them among the first after the seam (their outbox ids are older than any written after the promotion),
        # so only a window's worth of events after it are looked at (each payload parsed), or fewer once every
        # change is matched; then the hot path is as before.
        self._before_seam: dict[str, EventId] = {}
        self._checks_left = 0
        self.erasures = 0  # how many dispatches erased notes (history reads kept from before are stale)

    def start_at(self, last: EventId | None, recent: list[Event]) -> None:
        """Set the position the stream is followed from, with the events that led up to it (oldest first)."""
        self.last = last
        self._recent.clear()
        self._remember(recent)
        self.positioned.set()

    def _remember(self, events: list[Event]) -> None:
        if self._recent.maxlen == 0:
            return
        for event in events:  # the window stays contiguous in seq: a gap (lost history, a seam) starts it afresh
            if self._recent and not event.id.follows(self._recent[-1].id):
                self._recent.clear()
            self._recent.append(event)

    @property
    def oldest(self) -> EventId | None:
        """The oldest event this hub remembers (or its position, if it remembers none)."""
        return self._recent[0].id if self._recent else self.last

    def recent_after(self, position: EventId, limit: int) -> list[Event] | None:
        """Up to `limit` events that follow `position`, from memory ([] if `position` is the newest one), or None
        if the window does not reach back to `position`."""
        recent = self._recent
        if not recent:
            return None
        offset = position.seq - recent[0].id.seq + 1  # the index of the event after `position`
        if offset < 0 or offset > len(recent):
            return None
        if offset == 0 and not recent[0].id.follows(position):
            return None
        if offset > 0 and recent[offset - 1].id != position:
            return None  # same seq, other event: a cursor from before Redis lost its data
        return list(islice(recent, offset, offset + limit))

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    @property
    def subscribers(self) -> frozenset[Subscriber]:
        return frozenset(self._subscribers)

    def add(self, subscriber: Subscriber) -> None:
        if self._closing is not None:
            raise self._closing
        self._subscribers.add(subscriber)
        if subscriber.last == self.last:
            self._follow(subscriber)
        else:
            self._stepping.add(subscriber)

    def discard(self, subscriber: Subscriber) -> None:
        self._subscribers.discard(subscriber)
        self._stepping.discard(subscriber)
        if subscriber._following is self:
            self._unfollow(subscriber)

    def _follow(self, subscriber: Subscriber) -> None:
        subscriber._following = self
        self._routes.setdefault(route_of(subscriber.filter), set()).add(subscriber)

    def _unfollow(self, subscriber: Subscriber) -> None:
        """Back to a position of its own (the hub's, before the hub moves on)."""
        route = route_of(subscriber.filter)
        routed = self._routes[route]
        routed.discard(subscriber)
        if not routed:
            del self._routes[route]
        subscriber.last = self.last

    def dispatch(self, events: list[Event], read_at: float | None = None, source: str = "redis") -> None:
        """Offer `events` (read at `read_at`, time.monotonic(), from `source`) to every subscriber: through their
        routes, to those at the hub's position, when the events follow it with nothing a route cannot decide
        (a seam, a repeat, a public event); to each in turn otherwise."""
        if not events:
            return
        if self._before_seam or any(event.seam for event in events):
            events = self._once(events)
        round_ = None
        if self._on_written is not None:
            round_ = Round(time.monotonic() if read_at is None else read_at, source, self._on_written)
        routable = self._routable(events)
        if not routable:
            for subscriber in [s for routed in self._routes.values() for s in routed]:
                self._unfollow(subscriber)
                self._stepping.add(subscriber)
        ended = []
        for subscriber in self._stepping:
            subscriber.offer(events, round_)
            if subscriber.failure is not None:
                ended.append(subscriber)
        if routable:
            self._route(events, round_, ended)
        # Released at once: a subscriber ended as SLOW_CONSUMER may sit in a write its client never reads.
        for subscriber in ended:
            self.discard(subscriber)
        self.last = events[-1].id
        for subscriber in [s for s in self._stepping if s.last == self.last]:  # caught up
            self._stepping.discard(subscriber)
            self._follow(subscriber)
        self._remember(events)
        erased = {event.booking_id for event in events if event.erases}
        if erased:
            self._erase(erased)

    def _routable(self, events: list[Event]) -> bool:
        """Whether `events` follow the hub's position, each deliverable by its route alone."""
        last = self.last
        for event in events:
            if event.seam or event.public or event.repeats is not None:
                return False
            if last is not None and not event.id.follows(last):
                return False  # a gap: each subscriber ends on it (Subscriber.offer)
            last = event.id
        return True

    def _route(self, events: list[Event], round_: Round | None, ended: list[Subscriber]) -> None:
        """Offer `events` to the subscribers at the hub's position that their routes reach: the work is the
        deliveries', not the subscribers'."""
        routes = self._routes
        if len(events) == 1:  # the common case: each subscriber is on one route, so none is reached twice
            event = events[0]
            reached: Iterable[Subscriber] = chain.from_iterable(routes.get(route, ()) for route in _routes_to(event))
        else:
            reached = {s for event in events for route in _routes_to(event) for s in routes.get(route, ())}
        for subscriber in reached:
            subscriber.take(events, round_)
            if subscriber.failure is not None:
                ended.append(subscriber)

    def _once(self, events: list[Event]) -> list[Event]:
        """`events`, each change already dispatched before a seam among them (or before the last one) marked with
        the id it was dispatched under (Event.repeats)."""
        kept: list[Event] = []
        for event in events:
            if event.seam:
                self._before_seam = {change: e.id for e in (*self._recent, *kept) if (change := e.change())}
                self._checks_left = self._recent.maxlen or 0
            elif self._before_seam:
                if (earlier := self._before_seam.pop(event.change(), None)) is not None:
                    event = replace(event, repeats=earlier)
                self._checks_left -= 1
                if self._checks_left <= 0:
                    self._before_seam = {}
            kept.append(event)
        return kept

    def _erase(self, booking_ids: set[str]) -> None:
        """Erase the notes of these bookings from the events remembered (one pass, however many bookings), before
        anyone can resume past their HARD_DELETED events."""
        self.erasures += 1
        recent = self._recent
        for index, event in enumerate(recent):
            if event.booking_id in booking_ids and not event.erases:
                recent[index] = without_notes(event)

    def close(self, error: ServiceError) -> None:
        """End every subscription with `error` and refuse new ones."""
        self._closing = error
        for subscriber in list(self._subscribers):
            subscriber.fail(error)
