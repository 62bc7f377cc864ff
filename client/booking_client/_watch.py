"""`BookingClient.watch()`: the change events a caller may see, as one stream that heals itself.

The stream is resumed, from the last event yielded, whenever it breaks in a way another try can mend:
UNAVAILABLE (an instance lost or shutting down, a connection aged out, Redis down), RESOURCE_EXHAUSTED (the
subscriber fell behind: SLOW_CONSUMER; or the caller holds as many streams as the instance allows:
TOO_MANY_STREAMS), a stream reset by a proxy (nginx reports a vanished instance as INTERNAL "RST_STREAM"), or an
end without an error. Waits between tries are jittered and grow while tries keep failing; a refusal for too many
streams waits seconds, not milliseconds (a bound does not clear at once, and a tight loop only loads the server).
Before the first event the cursor is the position the server names in its initial metadata
(`x-stream-position`), so nothing committed in between is missed. No event is yielded twice or out of order
(event ids increase: `ms-seq`). OUT_OF_RANGE (the stream no longer holds what follows the cursor) raises
CursorExpired: the caller must re-read state (ListBookings) and watch again, as the informer does.

A stream ends (UNAUTHENTICATED `TOKEN_EXPIRED`) when the token that opened it expires. Given a token callable
(BookingClient's `token=`), the watch subscribes again at once, with the token the callable returns now, from
its cursor: nothing is missed or repeated. With a fixed token, or when the new token is refused too, it raises
Unauthenticated.

`cursor` is the last event yielded (or the start position, or a later provider schedule change, which the
watch passes over: BookingClient's watch yields booking events): a caller that keeps it can watch again from it
after a restart of its own (`resume_after=`). `started` is set once the server has accepted the subscription.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncGenerator, Callable
from typing import TYPE_CHECKING, Protocol

import grpc

from booking_api.booking.v1 import events_pb2
from booking_api.notify.v1 import notify_pb2
from booking_client._errors import TooManyStreams, from_rpc_error

if TYPE_CHECKING:
    from booking_client._options import Backoff

    SubscribeCall = grpc.aio.UnaryStreamCall[notify_pb2.SubscribeRequest, notify_pb2.SubscribeResponse]

POSITION_HEADER = "x-stream-position"
# After TOO_MANY_STREAMS: the first wait, and the most any wait grows to (each jittered down to half).
REFUSED_WAIT_SECONDS = 1.0
REFUSED_MAX_WAIT_SECONDS = 30.0
RESUMABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED}


def position(event_id: str) -> tuple[int, int] | None:
    """An event id's place in the stream (`ms-seq`), or None if it is not one."""
    ms, _, seq = event_id.partition("-")
    return (int(ms), int(seq)) if ms.isdigit() and seq.isdigit() else None


def retry_delay(backoff: Backoff, failures: int, *, refused: bool) -> float:
    """How long to wait before the next try, after `failures` tries in a row failed; `refused`: the last one
    was refused for too many streams."""
    if refused:
        return min(REFUSED_MAX_WAIT_SECONDS, REFUSED_WAIT_SECONDS * 2.0**failures) * random.uniform(0.5, 1.0)
    return backoff.delay(failures)


def _token_expired(error: grpc.aio.AioRpcError) -> bool:
    return error.code() == grpc.StatusCode.UNAUTHENTICATED and from_rpc_error(error).reason == "TOKEN_EXPIRED"


def _mendable(error: grpc.aio.AioRpcError) -> bool:
    if error.code() in RESUMABLE:
        return True
    return error.code() == grpc.StatusCode.INTERNAL and "RST_STREAM" in (error.details() or "")


class Subscriptions(Protocol):
    """What a Watch needs to subscribe (BookingClient is one): where it subscribes, for its progress lines; how
    long to wait between tries; whether a new call gets a fresh token; and the call itself."""

    @property
    def notify_target(self) -> str: ...

    @property
    def backoff(self) -> Backoff: ...

    @property
    def refreshes_tokens(self) -> bool: ...

    async def open_subscription(self, request: notify_pb2.SubscribeRequest, request_id: str) -> SubscribeCall: ...


class Watch:
    def __init__(
        self,
        client: Subscriptions,
        resume_after: str,
        customer_id: str,
        provider_id: str,
        booking_id: str,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.client = client
        self.progress = progress or (lambda _: None)
        self.cursor = resume_after  # the last event yielded (or the start position): where a resume begins
        self.filters = {"customer_id": customer_id, "provider_id": provider_id, "booking_id": booking_id}
        self.resumes = 0  # how often the stream broke and was resumed
        self.started = asyncio.Event()  # set once the server has accepted the first subscription
        self._events: AsyncGenerator[events_pb2.BookingEvent, None] | None = None

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> events_pb2.BookingEvent:
        if self._events is None:
            self._events = self.events()
        return await anext(self._events)

    async def aclose(self) -> None:
        """End the subscription now (otherwise it ends with the client)."""
        if self._events is not None:
            await self._events.aclose()

    async def events(self) -> AsyncGenerator[events_pb2.BookingEvent, None]:
        failures = 0
        while True:
            request = notify_pb2.SubscribeRequest(resume_after=self.cursor, **self.filters)
            request_id = f"watch-{id(self):x}-{self.resumes}"
            self.progress(f"connecting to {self.client.notify_target}")
            call = await self.client.open_subscription(request, request_id)
            refused = accepted = False
            try:
                accepted = await self._note_start(call)
                self.progress(f"subscribed at {self.client.notify_target}, after {self.cursor or 'now'}")
                async for response in call:
                    failures = 0
                    for event in response.events:
                        if self._is_new(event.event_id):
                            self.cursor = event.event_id
                            yield event
                    # Schedule changes share the stream's positions: a resume starts after them too, so a
                    # stream of nothing else for long never leaves the cursor behind what the stream keeps.
                    for other in response.schedule_events:
                        if self._is_new(other.event_id) and position(other.event_id) is not None:
                            self.cursor = other.event_id
            except grpc.aio.AioRpcError as error:
                if accepted and self.client.refreshes_tokens and _token_expired(error):
                    self.resumes += 1
                    self.progress(f"the token expired; subscribing again after {self.cursor} with a fresh one")
                    continue  # at once: nothing is wrong but the token, and a fresh one is at hand
                if not _mendable(error):
                    raise from_rpc_error(error, request_id) from error
                refused = isinstance(from_rpc_error(error), TooManyStreams)
                broke = f"{error.code().name}: {error.details()}"
            else:
                broke = "the stream ended"
            finally:
                call.cancel()
            self.resumes += 1
            delay = retry_delay(self.client.backoff, failures, refused=refused)
            self.progress(f"{broke}; retrying in {delay:.1f}s")
            await asyncio.sleep(delay)
            failures = min(failures + 1, 10)

    async def _note_start(self, call: SubscribeCall) -> bool:
        """Take the start position the server names, if the watch has none; whether the server accepted the
        call (a call refused before the service, a bad token say, has no initial metadata)."""
        metadata = await call.initial_metadata()
        if not self.cursor:
            named = dict(metadata or ()).get(POSITION_HEADER)
            if isinstance(named, str) and position(named) is not None:
                self.cursor = named
        self.started.set()
        return bool(metadata)

    def _is_new(self, event_id: str) -> bool:
        """Whether `event_id` comes after the cursor (a resumed stream may repeat what was already yielded)."""
        if not self.cursor:
            return True
        new, last = position(event_id), position(self.cursor)
        if new is None or last is None:
            return event_id != self.cursor
        return new > last
