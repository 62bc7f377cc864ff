"""The protocol layer: validates a Subscribe request and streams the serialized responses.

Responses are serialized once per event by the reader (notify_service.stream), so Subscribe is registered with
a pass-through serializer and writes those bytes as they are.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable

import grpc

from booking_api.notify.v1 import notify_pb2
from notify_service import metrics
from notify_service.hub import EventFilter, Subscriber
from notify_service.limits import StreamCounts
from notify_service.subscriptions import Subscriptions
from svc_common.errors import ServiceError, Unauthenticated
from svc_common.eventstream import EventId
from svc_common.logs import REQUEST_ID_HEADER, call_fields, current_request_id
from svc_common.principal import current_principal
from svc_common.scope import Scope
from svc_common.validation import Checker

log = logging.getLogger(__name__)

SERVICE_NAME = notify_pb2.DESCRIPTOR.services_by_name["NotifyService"].full_name


def _request(request: notify_pb2.SubscribeRequest) -> tuple[EventFilter, EventId | None]:
    check = Checker()
    customer = check.identifier("customer_id", request.customer_id, required=False)
    provider = check.identifier("provider_id", request.provider_id, required=False)
    booking = str(check.booking_id("booking_id", request.booking_id)) if request.booking_id else None
    cursor = None
    if request.resume_after:
        cursor = EventId.parse(request.resume_after)
        if cursor is None:
            check.fail("resume_after", "not an event_id this service sent (expected <digits>-<digits>)")
    check.done()
    scope = Scope.of(current_principal())
    return EventFilter(scope, customer_id=customer, provider_id=provider, booking_id=booking), cursor


# The initial metadata key that names the position a subscription starts after (absent only while the stream
# is empty: a live subscription then gets every event).
POSITION_HEADER = "x-stream-position"
EXPIRY_SLACK_SECONDS = 0.01  # how long after its token expires a stream is ended (see _end_at_expiry)


def _expire(subscriber: Subscriber) -> None:
    """End `subscriber`'s stream: its token expired (the error is made when it is needed, not held by every
    open stream until then)."""
    subscriber.fail(
        Unauthenticated(
            "the token that opened this stream has expired; subscribe again with a fresh token, resuming after the "
            "last event_id received",
            reason="TOKEN_EXPIRED",
        )
    )


class NotifyServicer:
    def __init__(
        self, subscriptions: Subscriptions, counts: StreamCounts, clock: Callable[[], float] = time.time
    ) -> None:
        self._subscriptions = subscriptions
        self._counts = counts
        self._clock = clock  # the clock tokens' expiry is judged by (svc_common.auth's)

    async def Subscribe(
        self,
        request: notify_pb2.SubscribeRequest,
        context: grpc.aio.ServicerContext[notify_pb2.SubscribeRequest, bytes],
    ) -> None:
        event_filter, cursor = _request(request)
        principal = current_principal()
        self._counts.open(principal)  # TOO_MANY_STREAMS past a bound (notify_service.limits)
        try:
            await self._serve(event_filter, cursor, context)
        finally:
            self._counts.close(principal)

    async def _serve(
        self,
        event_filter: EventFilter,
        cursor: EventId | None,
        context: grpc.aio.ServicerContext[notify_pb2.SubscribeRequest, bytes],
    ) -> None:
        subscriber = await self._subscriptions.open(event_filter, cursor)
        metrics.SUBSCRIPTIONS_OPEN.inc()
        ended = "CANCELLED"  # unless the service ends it (by the client, or by the server's own cancellation)
        principal = current_principal()
        expiry = self._end_at_expiry(subscriber, principal.expires_at)
        opened = {"method": "Subscribe", "caller": principal.id, "role": principal.role.value}
        opened |= {"request_id": current_request_id(), "resume_after": str(cursor) if cursor else ""}
        log.info("subscribed", extra={"rpc": opened})
        try:
            # Tell the client now that it is subscribed (gRPC would otherwise wait for the first event), and from
            # where: resuming after that position misses nothing, even before the first event arrives.
            start = cursor if cursor is not None else subscriber.last
            position = ((POSITION_HEADER, str(start)),) if start is not None else ()
            await context.send_initial_metadata(((REQUEST_ID_HEADER, current_request_id()), *position))
            if cursor is not None:
                async for payload in self._subscriptions.replay(subscriber, cursor):
                    if subscriber.failure is not None:  # the token expired while history was read
                        raise subscriber.failure
                    await context.write(payload)
            while True:  # the hot path: one wait and one write per response, no generators in between
                await context.write(await subscriber.next())
                subscriber.written()
        except ServiceError as exc:
            ended = exc.reason or type(exc).__name__
            raise
        finally:
            if expiry is not None:
                expiry.cancel()
            self._subscriptions.close(subscriber)
            metrics.SUBSCRIPTIONS_OPEN.dec()
            metrics.SUBSCRIPTIONS_ENDED.labels(reason=ended).inc()
            call_fields().update(events=subscriber.delivered, ended=ended)  # on the call's own log line

    def _end_at_expiry(self, subscriber: Subscriber, expires_at: float) -> asyncio.TimerHandle | None:
        """End `subscriber`'s stream when the token that opened it is no longer accepted (its `exp` plus the
        leeway), as a new call with it would be refused; the client subscribes again with a fresh token, from
        the last event it received."""
        if math.isinf(expires_at):
            return None
        # Past the instant, not at it: the event loop's timers may fire up to a millisecond early (libuv's are
        # whole milliseconds), and a client that subscribed again at once could get the very same token (`exp`
        # is whole seconds), still accepted for that millisecond and refused on arrival.
        delay = max(0.0, expires_at - self._clock()) + EXPIRY_SLACK_SECONDS
        return asyncio.get_running_loop().call_later(delay, _expire, subscriber)

    def handler(self) -> grpc.GenericRpcHandler:
        """The service's handlers; responses are already serialized, so they pass through as they are."""
        return grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {
                "Subscribe": grpc.unary_stream_rpc_method_handler(
                    self.Subscribe, request_deserializer=notify_pb2.SubscribeRequest.FromString
                )
            },
        )
