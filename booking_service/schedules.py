"""The provider schedule use cases: read one (any caller), replace or change one (the provider itself or an
admin). Each change is one statement with its audit entry (booking_service.sql: PUT_SCHEDULE_SQL), conditional
on the version read, retried when another change came in between."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from booking_service.availability import Schedule
from booking_service.domain import RequestRepeated, is_admin
from booking_service.ports import BookingStore, ChangeSignal
from svc_common.errors import Aborted, FieldViolation, InvalidArgument, NotFound, PermissionDenied
from svc_common.principal import Principal, Role

# The fields UpdateProviderSchedule's update_mask may name.
SCHEDULE_FIELDS = (
    "time_zone",
    "weekly_hours",
    "date_overrides",
    "buffer_before",
    "buffer_after",
    "minimum_notice",
    "booking_horizon",
)
CONCURRENT_TRIES = 5  # reads and conditional writes before giving up on a schedule others keep changing


def schedule_not_found(provider_id: str) -> NotFound:
    return NotFound(f"provider {provider_id} has no schedule (it is available at all times)", reason="NO_SCHEDULE")


class ScheduleUseCases:
    def __init__(self, storage: BookingStore, changes: ChangeSignal) -> None:
        self._storage = storage
        self._changes = changes  # told after a change commits (its event waits in the outbox)

    async def get(self, principal: Principal, provider_id: str) -> Schedule:
        schedule = await self._storage.schedule(provider_id)
        if schedule is None:
            raise schedule_not_found(provider_id)
        return schedule

    async def update(
        self,
        principal: Principal,
        given: Schedule,
        mask: Sequence[str],
        *,
        allow_missing: bool,
        version: int | None,
        request_id: str | None,
    ) -> Schedule:
        """Replace the provider's schedule with `given`, or only the fields `mask` names (empty: all)."""
        provider_id = given.provider_id
        if not is_admin(principal) and not (principal.role is Role.PROVIDER and principal.id == provider_id):
            raise PermissionDenied(
                "only the provider itself or an admin may change its schedule", reason="NOT_OWN_SCHEDULE"
            )
        if request_id is not None and await self._storage.schedule_request_done(principal.id, request_id):
            return await self._repeat(principal, provider_id, request_id)
        for _ in range(CONCURRENT_TRIES):
            current = await self._storage.schedule(provider_id)
            if current is None and not allow_missing:
                raise schedule_not_found(provider_id)
            if version is not None and (current is None or current.version != version):
                raise Aborted("the schedule has changed; read it again for its current etag", reason="ETAG_MISMATCH")
            if current is None and mask and "time_zone" not in mask:
                raise InvalidArgument(
                    [FieldViolation("update_mask", "a new schedule needs its time_zone: name it, or send no mask")]
                )
            new = given if current is None or not mask else _merged(current, given, mask)
            try:
                written = await self._storage.put_schedule(
                    new,
                    expected_version=current.version if current else None,
                    actor=principal,
                    request_id=request_id,
                )
            except RequestRepeated:  # the same request, concurrently: its result is this one's
                return await self._repeat(principal, provider_id, request_id)
            if written is not None:
                self._changes.committed()
                return written
        raise Aborted("the schedule kept changing under this update; try again", reason="CONCURRENT_MODIFICATION")

    async def _repeat(self, principal: Principal, provider_id: str, request_id: str | None) -> Schedule:
        done = await self._storage.schedule_request_done(principal.id, request_id or "")
        if done != provider_id:
            raise InvalidArgument(
                [FieldViolation("request_id", "already used by this caller for another provider's schedule")],
                reason="REQUEST_ID_REUSED",
            )
        return await self.get(principal, provider_id)


def _merged(current: Schedule, given: Schedule, mask: Sequence[str]) -> Schedule:
    return dataclasses.replace(current, **{name: getattr(given, name) for name in mask})
