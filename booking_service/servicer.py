"""The protocol layer: protobuf requests into domain values, domain results into protobuf responses.

Errors are raised as `svc_common.errors` and mapped to statuses by the server's interceptor. Admin-only RPCs
check the caller's role before its input (AIP-211), so a role that may never call one always gets
PERMISSION_DENIED; the use cases check it again for callers other than this servicer.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf import duration_pb2
from google.type import interval_pb2
from grpc.aio import ServicerContext as Context

from booking_api.booking.v1 import booking_pb2, booking_pb2_grpc
from booking_service.convert import audit_to_proto, booking_to_proto, interval_to_proto
from booking_service.domain import (
    DEFAULT_HOLD_TTL,
    EARLIEST_TIME,
    LATEST_TIME,
    MAX_HOLD_TTL,
    MAX_NOTES_CHARS,
    MAX_REASON_CHARS,
    MAX_SLOTS_WINDOW,
    MIN_HOLD_TTL,
    UPDATABLE,
    BookingChange,
    NewBooking,
)
from booking_service.schedule_proto import schedule_from_proto, schedule_to_proto
from booking_service.schedules import SCHEDULE_FIELDS, ScheduleUseCases
from booking_service.usecases import BookingUseCases, refuse_providers, require_admin
from svc_common.principal import Principal, Role, current_principal
from svc_common.validation import Checker


def _new_booking(
    request: booking_pb2.CreateBookingRequest | booking_pb2.HoldSlotRequest, check: Checker, caller: Principal
) -> NewBooking:
    if not request.HasField("booking"):
        check.fail("booking", "required")
    b = request.booking
    customer = check.identifier("booking.customer_id", b.customer_id, required=False)
    if customer is None and caller.role is not Role.USER:  # a user books for itself by default
        check.fail("booking.customer_id", "required")
    new = NewBooking(
        customer_id=customer or caller.id,
        provider_id=check.identifier("booking.provider_id", b.provider_id) or "",
        service_id=check.identifier("booking.service_id", b.service_id) or "",
        start_time=check.time_within(
            "booking.start_time", b.HasField("start_time"), b.start_time, EARLIEST_TIME, LATEST_TIME
        ),
        end_time=check.time_within("booking.end_time", b.HasField("end_time"), b.end_time, EARLIEST_TIME, LATEST_TIME),
        notes=check.text("booking.notes", b.notes, MAX_NOTES_CHARS),
    )
    if b.HasField("start_time") and b.HasField("end_time") and not check.violations and new.end_time <= new.start_time:
        check.fail("booking.end_time", "must be after start_time")
    return new


MAX_MASK_PATHS = 16  # four fields may be named, a few times over


def _interval(check: Checker, field: str, interval: interval_pb2.Interval) -> tuple[datetime, datetime]:
    """Both ends of an interval, in the range of booking times, the end after the start."""
    start = check.time_within(
        f"{field}.start_time", interval.HasField("start_time"), interval.start_time, EARLIEST_TIME, LATEST_TIME
    )
    end = check.time_within(
        f"{field}.end_time", interval.HasField("end_time"), interval.end_time, EARLIEST_TIME, LATEST_TIME
    )
    if not check.violations and end <= start:
        check.fail(f"{field}.end_time", "must be after start_time")
    return start, end


def _change(request: booking_pb2.UpdateBookingRequest, check: Checker) -> BookingChange:
    """The fields the update mask names, with their new values (AIP-134: only those paths, each required)."""
    paths = list(request.update_mask.paths)
    if not paths:
        check.fail("update_mask", f"required: the fields to change, among {', '.join(UPDATABLE)}")
    elif len(paths) > MAX_MASK_PATHS:  # a violation per path would outgrow what a status may carry
        check.fail("update_mask", f"at most {MAX_MASK_PATHS} paths, among {', '.join(UPDATABLE)}")
        paths = []
    for n, path in enumerate(paths):
        if path not in UPDATABLE:
            check.fail(f"update_mask.paths[{n}]", f"{path!r} cannot be updated; only {', '.join(UPDATABLE)}")
    b = request.booking
    values: dict[str, object] = {}
    if "start_time" in paths:
        values["start_time"] = check.time_within(
            "booking.start_time", b.HasField("start_time"), b.start_time, EARLIEST_TIME, LATEST_TIME
        )
    if "end_time" in paths:
        values["end_time"] = check.time_within(
            "booking.end_time", b.HasField("end_time"), b.end_time, EARLIEST_TIME, LATEST_TIME
        )
    if "service_id" in paths:
        values["service_id"] = check.identifier("booking.service_id", b.service_id)
    if "notes" in paths:
        values["notes"] = check.text("booking.notes", b.notes, MAX_NOTES_CHARS)
    change = BookingChange(**values)  # type: ignore[arg-type]
    if change.start_time and change.end_time and not check.violations and change.end_time <= change.start_time:
        check.fail("booking.end_time", "must be after start_time")
    return change


def _duration(check: Checker, field: str, present: bool, value: duration_pb2.Duration) -> timedelta:
    """A duration above 0 and at most the longest window, in whole microseconds."""
    if not present:
        check.fail(field, "required")
    elif value.nanos % 1000 or not -1_000_000_000 < value.nanos < 1_000_000_000:
        check.fail(field, "must have whole microseconds (nanos a multiple of 1000)")
    elif not timedelta(0) < value.ToTimedelta() <= MAX_SLOTS_WINDOW:
        check.fail(field, f"must be more than 0 and at most {MAX_SLOTS_WINDOW.days} days")
    else:
        return value.ToTimedelta()
    return timedelta(0)


def _ttl(check: Checker, present: bool, value: duration_pb2.Duration) -> timedelta:
    """A hold's ttl: unset or 0 is the default; else from MIN_HOLD_TTL to MAX_HOLD_TTL, in whole microseconds."""
    if not present or (value.seconds == 0 and value.nanos == 0):
        return DEFAULT_HOLD_TTL
    if value.nanos % 1000 or not -1_000_000_000 < value.nanos < 1_000_000_000:
        check.fail("ttl", "must have whole microseconds (nanos a multiple of 1000)")
    elif not MIN_HOLD_TTL <= value.ToTimedelta() <= MAX_HOLD_TTL:
        check.fail("ttl", f"must be 0 (5 minutes) or from {MIN_HOLD_TTL} to {MAX_HOLD_TTL}")
    else:
        return value.ToTimedelta()
    return DEFAULT_HOLD_TTL


def _filters(
    request: booking_pb2.ListBookingsRequest | booking_pb2.ListDeletedBookingsRequest,
) -> tuple[str | None, str | None]:
    """The optional customer_id and provider_id filters of a list request."""
    check = Checker()
    customer = check.identifier("customer_id", request.customer_id, required=False)
    provider = check.identifier("provider_id", request.provider_id, required=False)
    check.done()
    return customer, provider


class BookingServicer(booking_pb2_grpc.BookingServiceServicer):
    def __init__(self, usecases: BookingUseCases, schedules: ScheduleUseCases) -> None:
        self._uc = usecases
        self._schedules = schedules

    async def CreateBooking(
        self,
        request: booking_pb2.CreateBookingRequest,
        context: Context[booking_pb2.CreateBookingRequest, booking_pb2.CreateBookingResponse],
    ) -> booking_pb2.CreateBookingResponse:
        principal = current_principal()
        check = Checker()
        new = _new_booking(request, check, principal)
        request_id = check.identifier("request_id", request.request_id, required=False)
        check.done()
        booking = await self._uc.create(principal, new, request_id, ignore_availability=request.ignore_availability)
        return booking_pb2.CreateBookingResponse(booking=booking_to_proto(booking))

    async def HoldSlot(
        self,
        request: booking_pb2.HoldSlotRequest,
        context: Context[booking_pb2.HoldSlotRequest, booking_pb2.HoldSlotResponse],
    ) -> booking_pb2.HoldSlotResponse:
        principal = current_principal()
        refuse_providers(principal)  # a role that may never hold: PERMISSION_DENIED before its input (AIP-211)
        check = Checker()
        new = _new_booking(request, check, principal)
        ttl = _ttl(check, request.HasField("ttl"), request.ttl)
        request_id = check.identifier("request_id", request.request_id, required=False)
        check.done()
        booking = await self._uc.hold(principal, new, ttl, request_id)
        return booking_pb2.HoldSlotResponse(booking=booking_to_proto(booking))

    async def ConfirmBooking(
        self,
        request: booking_pb2.ConfirmBookingRequest,
        context: Context[booking_pb2.ConfirmBookingRequest, booking_pb2.ConfirmBookingResponse],
    ) -> booking_pb2.ConfirmBookingResponse:
        refuse_providers(current_principal())
        check = Checker()
        booking_id = check.booking_id("booking_id", request.booking_id)
        version = check.etag("etag", request.etag)
        notes = check.text("notes", request.notes, MAX_NOTES_CHARS) or None  # empty: kept
        request_id = check.identifier("request_id", request.request_id, required=False)
        check.done()
        booking = await self._uc.confirm(
            current_principal(), booking_id, version=version, request_id=request_id, notes=notes
        )
        return booking_pb2.ConfirmBookingResponse(booking=booking_to_proto(booking))

    async def GetBooking(
        self,
        request: booking_pb2.GetBookingRequest,
        context: Context[booking_pb2.GetBookingRequest, booking_pb2.GetBookingResponse],
    ) -> booking_pb2.GetBookingResponse:
        check = Checker()
        booking_id = check.booking_id("booking_id", request.booking_id)
        check.done()
        booking = await self._uc.get(current_principal(), booking_id)
        return booking_pb2.GetBookingResponse(booking=booking_to_proto(booking))

    async def ListBookings(
        self,
        request: booking_pb2.ListBookingsRequest,
        context: Context[booking_pb2.ListBookingsRequest, booking_pb2.ListBookingsResponse],
    ) -> booking_pb2.ListBookingsResponse:
        if request.show_deleted:
            require_admin(current_principal(), "list deleted bookings")
        customer, provider = _filters(request)
        overlaps = None
        if request.HasField("overlaps"):
            check = Checker()
            overlaps = _interval(check, "overlaps", request.overlaps)
            check.done()
        page = await self._uc.list_bookings(
            current_principal(),
            customer_id=customer,
            provider_id=provider,
            show_deleted=request.show_deleted,
            page_size=request.page_size,
            page_token=request.page_token,
            overlaps=overlaps,
        )
        return booking_pb2.ListBookingsResponse(
            bookings=[booking_to_proto(b) for b in page.items], next_page_token=page.next_page_token
        )

    async def DeleteBooking(
        self,
        request: booking_pb2.DeleteBookingRequest,
        context: Context[booking_pb2.DeleteBookingRequest, booking_pb2.DeleteBookingResponse],
    ) -> booking_pb2.DeleteBookingResponse:
        check = Checker()
        booking_id = check.booking_id("booking_id", request.booking_id)
        reason = check.text("reason", request.reason, MAX_REASON_CHARS)
        version = check.etag("etag", request.etag)
        check.done()
        booking = await self._uc.delete(current_principal(), booking_id, reason=reason, version=version)
        return booking_pb2.DeleteBookingResponse(booking=booking_to_proto(booking))

    async def RestoreBooking(
        self,
        request: booking_pb2.RestoreBookingRequest,
        context: Context[booking_pb2.RestoreBookingRequest, booking_pb2.RestoreBookingResponse],
    ) -> booking_pb2.RestoreBookingResponse:
        require_admin(current_principal(), "restore bookings")
        check = Checker()
        booking_id = check.booking_id("booking_id", request.booking_id)
        version = check.etag("etag", request.etag)
        check.done()
        booking = await self._uc.restore(current_principal(), booking_id, version=version)
        return booking_pb2.RestoreBookingResponse(booking=booking_to_proto(booking))

    async def ListDeletedBookings(
        self,
        request: booking_pb2.ListDeletedBookingsRequest,
        context: Context[booking_pb2.ListDeletedBookingsRequest, booking_pb2.ListDeletedBookingsResponse],
    ) -> booking_pb2.ListDeletedBookingsResponse:
        require_admin(current_principal(), "list deleted bookings")
        customer, provider = _filters(request)
        page = await self._uc.list_deleted(
            current_principal(),
            customer_id=customer,
            provider_id=provider,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return booking_pb2.ListDeletedBookingsResponse(
            bookings=[booking_to_proto(b) for b in page.items], next_page_token=page.next_page_token
        )

    async def HardDeleteBooking(
        self,
        request: booking_pb2.HardDeleteBookingRequest,
        context: Context[booking_pb2.HardDeleteBookingRequest, booking_pb2.HardDeleteBookingResponse],
    ) -> booking_pb2.HardDeleteBookingResponse:
        require_admin(current_principal(), "hard-delete bookings")
        check = Checker()
        booking_id = check.booking_id("booking_id", request.booking_id)
        check.done()
        await self._uc.hard_delete(current_principal(), booking_id)
        return booking_pb2.HardDeleteBookingResponse(booking_id=str(booking_id))

    async def PurgeDeletedBookings(
        self,
        request: booking_pb2.PurgeDeletedBookingsRequest,
        context: Context[booking_pb2.PurgeDeletedBookingsRequest, booking_pb2.PurgeDeletedBookingsResponse],
    ) -> booking_pb2.PurgeDeletedBookingsResponse:
        require_admin(current_principal(), "purge bookings")
        check = Checker()
        before = check.timestamp("deleted_before", request.HasField("deleted_before"), request.deleted_before)
        check.done()
        count, sample = await self._uc.purge(current_principal(), before, force=request.force)
        return booking_pb2.PurgeDeletedBookingsResponse(purge_count=count, purge_sample=sample)

    async def ListBookingAuditEntries(
        self,
        request: booking_pb2.ListBookingAuditEntriesRequest,
        context: Context[booking_pb2.ListBookingAuditEntriesRequest, booking_pb2.ListBookingAuditEntriesResponse],
    ) -> booking_pb2.ListBookingAuditEntriesResponse:
        require_admin(current_principal(), "read the audit trail")
        check = Checker()
        booking_id = check.booking_id("booking_id", request.booking_id)
        check.done()
        page = await self._uc.list_audit(
            current_principal(), booking_id, page_size=request.page_size, page_token=request.page_token
        )
        return booking_pb2.ListBookingAuditEntriesResponse(
            entries=[audit_to_proto(e) for e in page.items], next_page_token=page.next_page_token
        )

    async def UpdateBooking(
        self,
        request: booking_pb2.UpdateBookingRequest,
        context: Context[booking_pb2.UpdateBookingRequest, booking_pb2.UpdateBookingResponse],
    ) -> booking_pb2.UpdateBookingResponse:
        check = Checker()
        booking_id = check.booking_id("booking.id", request.booking.id)
        version = check.etag("booking.etag", request.booking.etag)
        change = _change(request, check)
        request_id = check.identifier("request_id", request.request_id, required=False)
        check.done()
        booking = await self._uc.update(
            current_principal(),
            booking_id,
            change,
            version=version,
            request_id=request_id,
            ignore_availability=request.ignore_availability,
        )
        return booking_pb2.UpdateBookingResponse(booking=booking_to_proto(booking))

    async def ListAvailableSlots(
        self,
        request: booking_pb2.ListAvailableSlotsRequest,
        context: Context[booking_pb2.ListAvailableSlotsRequest, booking_pb2.ListAvailableSlotsResponse],
    ) -> booking_pb2.ListAvailableSlotsResponse:
        check = Checker()
        provider = check.identifier("provider_id", request.provider_id) or ""
        if request.HasField("interval"):
            start, end = _interval(check, "interval", request.interval)
            if not check.violations and end - start > MAX_SLOTS_WINDOW:
                check.fail("interval", f"must be at most {MAX_SLOTS_WINDOW.days} days long")
        else:
            check.fail("interval", "required")
        duration = _duration(check, "duration", request.HasField("duration"), request.duration)
        step = None
        if request.HasField("slot_step") and request.slot_step.ToTimedelta() != timedelta(0):
            step = _duration(check, "slot_step", True, request.slot_step)
        check.done()
        found = await self._uc.free_slots(current_principal(), provider, start, end, duration, step)
        response = booking_pb2.ListAvailableSlotsResponse(
            free_intervals=[interval_to_proto(a, b) for a, b in found.free], time_zone=found.time_zone
        )
        add = response.slot_starts.add  # built field by field: the cheapest way to a thousand Timestamps
        for slot in found.slot_starts:
            seconds, micro = divmod(slot, 1_000_000)
            add(seconds=seconds, nanos=micro * 1000) if micro else add(seconds=seconds)
        return response

    async def GetProviderSchedule(
        self,
        request: booking_pb2.GetProviderScheduleRequest,
        context: Context[booking_pb2.GetProviderScheduleRequest, booking_pb2.GetProviderScheduleResponse],
    ) -> booking_pb2.GetProviderScheduleResponse:
        check = Checker()
        provider = check.identifier("provider_id", request.provider_id) or ""
        check.done()
        schedule = await self._schedules.get(current_principal(), provider)
        return booking_pb2.GetProviderScheduleResponse(schedule=schedule_to_proto(schedule))

    async def UpdateProviderSchedule(
        self,
        request: booking_pb2.UpdateProviderScheduleRequest,
        context: Context[booking_pb2.UpdateProviderScheduleRequest, booking_pb2.UpdateProviderScheduleResponse],
    ) -> booking_pb2.UpdateProviderScheduleResponse:
        check = Checker()
        if not request.HasField("schedule"):
            check.fail("schedule", "required")
        provider = check.identifier("schedule.provider_id", request.schedule.provider_id) or ""
        version = check.etag("schedule.etag", request.schedule.etag)
        mask = list(request.update_mask.paths)
        for i, path in enumerate(mask[:MAX_MASK_PATHS]):
            if path not in SCHEDULE_FIELDS:
                check.fail(f"update_mask.paths[{i}]", f"must be one of {', '.join(SCHEDULE_FIELDS)}")
        if len(mask) > MAX_MASK_PATHS:
            check.fail("update_mask", f"at most {MAX_MASK_PATHS} paths")
        today = datetime.now(UTC).date()
        schedule = schedule_from_proto(check, request.schedule, provider, today, mask or SCHEDULE_FIELDS)
        request_id = check.identifier("request_id", request.request_id, required=False)
        check.done()
        written = await self._schedules.update(
            current_principal(),
            schedule,
            sorted(set(mask)),
            allow_missing=request.allow_missing,
            version=version,
            request_id=request_id,
        )
        return booking_pb2.UpdateProviderScheduleResponse(schedule=schedule_to_proto(written))
