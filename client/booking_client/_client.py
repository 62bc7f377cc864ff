"""BookingClient: one typed async method per RPC of booking.v1.BookingService, and `watch`/`informer` over
notify.v1.NotifyService.

Every call carries the token (a string, or a callable returning a fresh one, sync or async), a request id
(`x-request-id`, the same on each retry, so the server's log lines of one call share it) and a deadline.
Calls that are safe to repeat are retried on UNAVAILABLE with jittered exponential backoff: reads, a purge
preview, and CreateBooking, which gets a request_id of its own when none is given (the server answers a
repeated request_id with the booking it made, never a second one). They are retried on CANCELLED too: this
client never cancels a call that way (cancelling its task raises CancelledError instead), so CANCELLED comes
from the server's side, as when a server shuts down just as the call arrives (grpc core reports calls it had
received but not yet handed to the service as CANCELLED: grpc/grpc#41785). Failures raise the BookingError subclass
for their reason (booking_client._errors).
"""

from __future__ import annotations

import asyncio
import inspect
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp
from google.type.interval_pb2 import Interval

from booking_api.booking.v1 import booking_pb2, booking_pb2_grpc
from booking_api.notify.v1 import notify_pb2, notify_pb2_grpc
from booking_client._errors import from_rpc_error
from booking_client._informer import Informer
from booking_client._options import Backoff, Tls
from booking_client._watch import Watch

Token = str | Callable[[], str] | Callable[[], Awaitable[str]]
M = TypeVar("M")

REQUEST_ID_HEADER = "x-request-id"
DEFAULT_TIMEOUT = 10.0
# Ping an idle connection every 20 s (the services allow one every 10 s), so a vanished server is noticed.
CHANNEL_OPTIONS: list[tuple[str, int | str]] = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


DEFAULT_BACKOFF = Backoff()
RETRIED = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})  # for calls safe to repeat


@dataclass(frozen=True)
class AvailableSlots:
    free_intervals: list[tuple[datetime, datetime]]  # the maximal free intervals, in time order
    slot_starts: list[datetime]  # where a booking of the duration asked may start
    time_zone: str  # the provider's (IANA), to show them in


@dataclass(frozen=True)
class PurgeResult:
    count: int  # purged, or (without force) how many would be
    sample: list[str]  # up to 100 of their ids


def timestamp(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _new_booking(
    customer_id: str, provider_id: str, service_id: str, start_time: datetime, end_time: datetime, notes: str
) -> booking_pb2.Booking:
    """What CreateBooking and HoldSlot send."""
    return booking_pb2.Booking(
        customer_id=customer_id,
        provider_id=provider_id,
        service_id=service_id,
        start_time=timestamp(start_time),
        end_time=timestamp(end_time),
        notes=notes,
    )


def interval(start: datetime, end: datetime) -> Interval:
    return Interval(start_time=timestamp(start), end_time=timestamp(end))


class BookingClient:
    """`async with BookingClient("host:50051", "host:50052", token=...) as client:` ..."""

    def __init__(
        self,
        booking_target: str,
        notify_target: str | None = None,
        *,
        token: Token,
        tls: Tls | bool | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = 4,
        backoff: Backoff = DEFAULT_BACKOFF,
        channel_options: Sequence[tuple[str, int | str]] = (),
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
    ) -> None:
        self.booking_target = booking_target
        self.notify_target = notify_target or booking_target
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._token = token
        self._tls = Tls() if tls is True else (tls or None)
        self._options = [*CHANNEL_OPTIONS, *channel_options]  # grpc channel arguments, added to the defaults
        self._interceptors = list(interceptors)  # grpc.aio client interceptors, on every channel
        self._channels: dict[str, grpc.aio.Channel] = {}

    async def __aenter__(self) -> BookingClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()

    def _channel(self, target: str) -> grpc.aio.Channel:
        if target not in self._channels:
            options = list(self._options)
            interceptors = self._interceptors or None
            if self._tls is None:
                self._channels[target] = grpc.aio.insecure_channel(target, options, interceptors=interceptors)
            else:
                if self._tls.server_name:
                    options.append(("grpc.ssl_target_name_override", self._tls.server_name))
                credentials = self._tls.credentials()
                self._channels[target] = grpc.aio.secure_channel(
                    target, credentials, options, interceptors=interceptors
                )
        return self._channels[target]

    @property
    def _booking(self) -> booking_pb2_grpc.BookingServiceAsyncStub:
        stub: booking_pb2_grpc.BookingServiceAsyncStub = booking_pb2_grpc.BookingServiceStub(
            self._channel(self.booking_target)
        )
        return stub

    @property
    def _notify(self) -> notify_pb2_grpc.NotifyServiceAsyncStub:
        stub: notify_pb2_grpc.NotifyServiceAsyncStub = notify_pb2_grpc.NotifyServiceStub(
            self._channel(self.notify_target)
        )
        return stub

    @property
    def refreshes_tokens(self) -> bool:
        """Whether each call asks the token callable for its token (a string token is the same every time)."""
        return callable(self._token)

    async def open_subscription(
        self, request: notify_pb2.SubscribeRequest, request_id: str
    ) -> grpc.aio.UnaryStreamCall[notify_pb2.SubscribeRequest, notify_pb2.SubscribeResponse]:
        """One Subscribe call, as a Watch makes it (most callers want `watch()`, which resumes it)."""
        return self._notify.Subscribe(request, metadata=await self.metadata(request_id))

    async def metadata(self, request_id: str) -> tuple[tuple[str, str], ...]:
        token = self._token() if callable(self._token) else self._token
        if inspect.isawaitable(token):
            token = await token
        return (("authorization", f"Bearer {token}"), (REQUEST_ID_HEADER, request_id))

    async def _call(
        self, rpc: Callable[..., Awaitable[M]], request: Any, *, idempotent: bool, timeout: float | None
    ) -> M:
        request_id = uuid.uuid4().hex
        attempt = 0
        while True:
            try:
                return await rpc(request, metadata=await self.metadata(request_id), timeout=timeout or self.timeout)
            except grpc.aio.AioRpcError as exc:
                if idempotent and exc.code() in RETRIED and attempt < self.retries:
                    await asyncio.sleep(self.backoff.delay(attempt))
                    attempt += 1
                    continue
                raise from_rpc_error(exc, request_id) from exc

    # --- booking.v1.BookingService ------------------------------------------------------------------------

    async def create_booking(
        self,
        *,
        provider_id: str,
        service_id: str,
        start_time: datetime,
        end_time: datetime,
        customer_id: str = "",
        notes: str = "",
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> booking_pb2.Booking:
        """Book `service_id` of `provider_id` from `start_time` to `end_time` (customer_id: for whom; a user
        books for itself and may leave it empty)."""
        request = booking_pb2.CreateBookingRequest(
            booking=_new_booking(customer_id, provider_id, service_id, start_time, end_time, notes),
            request_id=request_id or uuid.uuid4().hex,
        )
        response = await self._call(self._booking.CreateBooking, request, idempotent=True, timeout=timeout)
        return response.booking

    async def hold_slot(
        self,
        *,
        provider_id: str,
        service_id: str,
        start_time: datetime,
        end_time: datetime,
        ttl: timedelta | None = None,
        customer_id: str = "",
        notes: str = "",
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> booking_pb2.Booking:
        """Hold the slot for `ttl` (None: the service's 5 minutes; 1 second to 15 minutes) while the customer
        checks out: a booking in state HELD until its expire_time, then free again unless confirmed."""
        request = booking_pb2.HoldSlotRequest(
            booking=_new_booking(customer_id, provider_id, service_id, start_time, end_time, notes),
            request_id=request_id or uuid.uuid4().hex,
        )
        if ttl is not None:
            request.ttl.FromTimedelta(ttl)
        response = await self._call(self._booking.HoldSlot, request, idempotent=True, timeout=timeout)
        return response.booking

    async def confirm_booking(
        self,
        booking_id: str,
        *,
        etag: str = "",
        notes: str = "",
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> booking_pb2.Booking:
        """Turn a hold into a CONFIRMED booking (same id): HoldExpired after its expire_time, NotHeld if it is not
        a hold. `notes`, if given, replace the hold's."""
        request = booking_pb2.ConfirmBookingRequest(
            booking_id=booking_id, etag=etag, notes=notes, request_id=request_id or uuid.uuid4().hex
        )
        response = await self._call(self._booking.ConfirmBooking, request, idempotent=True, timeout=timeout)
        return response.booking

    async def get_booking(self, booking_id: str, *, timeout: float | None = None) -> booking_pb2.Booking:
        request = booking_pb2.GetBookingRequest(booking_id=booking_id)
        response = await self._call(self._booking.GetBooking, request, idempotent=True, timeout=timeout)
        return response.booking

    async def _pages(
        self, rpc: Callable[..., Awaitable[Any]], request: Callable[[str], Any], timeout: float | None
    ) -> AsyncIterator[Any]:
        """Each response of a paginated RPC (AIP-158), following next_page_token to the end."""
        token = ""
        while True:
            response = await self._call(rpc, request(token), idempotent=True, timeout=timeout)
            yield response
            token = response.next_page_token
            if not token:
                return

    async def list_bookings(
        self,
        *,
        customer_id: str = "",
        provider_id: str = "",
        show_deleted: bool = False,
        overlaps: tuple[datetime, datetime] | None = None,
        page_size: int = 100,
        timeout: float | None = None,
    ) -> AsyncIterator[booking_pb2.Booking]:
        """Every booking the caller may see (narrowed by the filters; `overlaps`: only those whose time overlaps
        [start, end)), page by page."""

        def request(token: str) -> booking_pb2.ListBookingsRequest:
            return booking_pb2.ListBookingsRequest(
                page_size=page_size,
                page_token=token,
                customer_id=customer_id,
                provider_id=provider_id,
                show_deleted=show_deleted,
                overlaps=interval(*overlaps) if overlaps else None,
            )

        async for response in self._pages(self._booking.ListBookings, request, timeout):
            for booking in response.bookings:
                yield booking

    async def update_booking(
        self,
        booking_id: str,
        *,
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        service_id: str | None = None,
        notes: str | None = None,
        etag: str = "",
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> booking_pb2.Booking:
        """Change the fields given (the others stay); with `etag`, only if the booking has not changed since (else
        EtagMismatch). Onto a taken slot: SlotUnavailable, and the booking stays where it was. Retried like a
        create: with a request_id of its own when none is given, so a retry never changes it twice."""
        fields = {"start_time": start_time, "end_time": end_time, "service_id": service_id, "notes": notes}
        given = {name: value for name, value in fields.items() if value is not None}
        booking = booking_pb2.Booking(id=booking_id, etag=etag)
        for name, value in given.items():
            if isinstance(value, datetime):
                getattr(booking, name).CopyFrom(timestamp(value))
            else:
                setattr(booking, name, value)
        request = booking_pb2.UpdateBookingRequest(
            booking=booking, update_mask=FieldMask(paths=list(given)), request_id=request_id or uuid.uuid4().hex
        )
        response = await self._call(self._booking.UpdateBooking, request, idempotent=True, timeout=timeout)
        return response.booking

    async def reschedule(
        self, booking_id: str, start_time: datetime, end_time: datetime, *, etag: str = "", timeout: float | None = None
    ) -> booking_pb2.Booking:
        """Move a booking to [start_time, end_time): its id, history and everything else stay."""
        return await self.update_booking(
            booking_id, start_time=start_time, end_time=end_time, etag=etag, timeout=timeout
        )

    async def list_available_slots(
        self,
        provider_id: str,
        start_time: datetime,
        end_time: datetime,
        duration: timedelta,
        *,
        slot_step: timedelta | None = None,
        timeout: float | None = None,
    ) -> AvailableSlots:
        """When a booking of `duration` fits in [start_time, end_time) (at most 31 days), by the provider's
        schedule (hours in its time zone, buffers, notice, horizon): the maximal free intervals, and the slot
        starts stepping by `slot_step` (default: `duration`) from the start of each working range."""
        request = booking_pb2.ListAvailableSlotsRequest(
            provider_id=provider_id, interval=interval(start_time, end_time), duration=Duration()
        )
        request.duration.FromTimedelta(duration)
        if slot_step is not None:
            request.slot_step.FromTimedelta(slot_step)
        response = await self._call(self._booking.ListAvailableSlots, request, idempotent=True, timeout=timeout)
        return AvailableSlots(
            [(i.start_time.ToDatetime(tzinfo=UTC), i.end_time.ToDatetime(tzinfo=UTC)) for i in response.free_intervals],
            [s.ToDatetime(tzinfo=UTC) for s in response.slot_starts],
            response.time_zone,
        )

    async def get_provider_schedule(
        self, provider_id: str, *, timeout: float | None = None
    ) -> booking_pb2.ProviderSchedule:
        """A provider's schedule; NotFound (reason NO_SCHEDULE) if it has none: it is available at all times."""
        request = booking_pb2.GetProviderScheduleRequest(provider_id=provider_id)
        response = await self._call(self._booking.GetProviderSchedule, request, idempotent=True, timeout=timeout)
        schedule: booking_pb2.ProviderSchedule = response.schedule
        return schedule

    async def update_provider_schedule(
        self,
        schedule: booking_pb2.ProviderSchedule,
        *,
        fields: Sequence[str] = (),
        allow_missing: bool = True,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> booking_pb2.ProviderSchedule:
        """Replace a provider's schedule (or only `fields`; creating it if missing, unless `allow_missing` is
        False); conditional on `schedule.etag` if set. Retried on UNAVAILABLE under one request_id."""
        request = booking_pb2.UpdateProviderScheduleRequest(
            schedule=schedule, allow_missing=allow_missing, request_id=request_id or uuid.uuid4().hex
        )
        request.update_mask.paths.extend(fields)
        response = await self._call(self._booking.UpdateProviderSchedule, request, idempotent=True, timeout=timeout)
        written: booking_pb2.ProviderSchedule = response.schedule
        return written

    async def delete_booking(
        self, booking_id: str, *, reason: str = "", etag: str = "", timeout: float | None = None
    ) -> booking_pb2.Booking:
        """Soft-delete; with `etag`, only if the booking has not changed since (else EtagMismatch)."""
        request = booking_pb2.DeleteBookingRequest(booking_id=booking_id, reason=reason, etag=etag)
        response = await self._call(self._booking.DeleteBooking, request, idempotent=False, timeout=timeout)
        return response.booking

    async def restore_booking(
        self, booking_id: str, *, etag: str = "", timeout: float | None = None
    ) -> booking_pb2.Booking:
        request = booking_pb2.RestoreBookingRequest(booking_id=booking_id, etag=etag)
        response = await self._call(self._booking.RestoreBooking, request, idempotent=False, timeout=timeout)
        return response.booking

    async def list_deleted_bookings(
        self,
        *,
        customer_id: str = "",
        provider_id: str = "",
        page_size: int = 100,
        timeout: float | None = None,
    ) -> AsyncIterator[booking_pb2.Booking]:
        """Every soft-deleted booking (admins only), page by page."""

        def request(token: str) -> booking_pb2.ListDeletedBookingsRequest:
            return booking_pb2.ListDeletedBookingsRequest(
                page_size=page_size, page_token=token, customer_id=customer_id, provider_id=provider_id
            )

        async for response in self._pages(self._booking.ListDeletedBookings, request, timeout):
            for booking in response.bookings:
                yield booking

    async def hard_delete_booking(self, booking_id: str, *, timeout: float | None = None) -> str:
        """Permanently remove a soft-deleted booking (admins only); returns its id."""
        request = booking_pb2.HardDeleteBookingRequest(booking_id=booking_id)
        response = await self._call(self._booking.HardDeleteBooking, request, idempotent=False, timeout=timeout)
        return response.booking_id

    async def purge_deleted_bookings(
        self, deleted_before: datetime, *, force: bool = False, timeout: float | None = None
    ) -> PurgeResult:
        """Hard-delete every booking soft-deleted before `deleted_before` (admins only); without `force`, only
        say how many would be, with a sample of their ids."""
        request = booking_pb2.PurgeDeletedBookingsRequest(deleted_before=timestamp(deleted_before), force=force)
        rpc = self._booking.PurgeDeletedBookings
        response = await self._call(rpc, request, idempotent=not force, timeout=timeout or max(self.timeout, 60))
        return PurgeResult(response.purge_count, list(response.purge_sample))

    async def list_booking_audit_entries(
        self, booking_id: str, *, page_size: int = 100, timeout: float | None = None
    ) -> AsyncIterator[booking_pb2.AuditEntry]:
        """The audit trail of a booking, oldest first, page by page."""

        def request(token: str) -> booking_pb2.ListBookingAuditEntriesRequest:
            return booking_pb2.ListBookingAuditEntriesRequest(
                booking_id=booking_id, page_size=page_size, page_token=token
            )

        async for response in self._pages(self._booking.ListBookingAuditEntries, request, timeout):
            for entry in response.entries:
                yield entry

    # --- notify.v1.NotifyService ----------------------------------------------------------------------------

    def watch(
        self,
        *,
        resume_after: str | None = None,
        customer_id: str = "",
        provider_id: str = "",
        booking_id: str = "",
        progress: Callable[[str], None] | None = None,
    ) -> Watch:
        """Every change the caller may see, after `resume_after` (None: from now), as an async iterator that
        resumes by itself after the stream breaks; raises CursorExpired when it cannot continue; its `cursor` is
        the last event yielded. `progress`, if given, is told in a line each time the watch connects, is
        subscribed, or waits to retry (booking_client._watch)."""
        return Watch(self, resume_after or "", customer_id, provider_id, booking_id, progress)

    def informer(self, *, customer_id: str = "", provider_id: str = "", show_deleted: bool = False) -> Informer:
        """A local cache of the bookings the caller may see, kept equal to the server's state
        (booking_client._informer)."""
        return Informer(
            lambda: self.list_bookings(customer_id=customer_id, provider_id=provider_id, show_deleted=show_deleted),
            lambda: self.watch(customer_id=customer_id, provider_id=provider_id),
            backoff=self.backoff,
            show_deleted=show_deleted,
        )
