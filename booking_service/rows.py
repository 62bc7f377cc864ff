"""Database rows into domain values, in one place for the storage and the outbox relay alike."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta
from typing import Any

import asyncpg

from booking_service.availability import DateOverride, LocalRange, Schedule, WorkingHours
from booking_service.domain import Actor, AuditAction, AuditEntry, Booking, BookingState
from svc_common.principal import Role

Record = asyncpg.Record


def _actor(record: Record, prefix: str) -> Actor | None:
    actor_id = record[f"{prefix}_id"]
    if actor_id is None:
        return None
    return Actor(actor_id, record[f"{prefix}_name"], Role(record[f"{prefix}_role"]))


def booking_from_record(record: Record) -> Booking:
    return Booking(
        id=str(record["id"]),
        customer_id=record["customer_id"],
        provider_id=record["provider_id"],
        service_id=record["service_id"],
        start_time=record["start_time"],
        end_time=record["end_time"],
        notes=record["notes"],
        create_time=record["create_time"],
        update_time=record["update_time"],
        version=record["version"],
        delete_time=record["delete_time"],
        deleted_by=_actor(record, "deleted_by"),
        deletion_reason=record["deletion_reason"],
        state=BookingState(record["state"]),
        expire_time=record["expire_time"],
    )


def booking_from_json(data: dict[str, Any]) -> Booking:
    def ts(key: str) -> datetime | None:
        value = data.get(key)
        return datetime.fromisoformat(value) if value else None

    deleted_by = None
    if data.get("deleted_by_id") is not None:
        deleted_by = Actor(data["deleted_by_id"], data["deleted_by_name"], Role(data["deleted_by_role"]))
    start, end, created, updated = ts("start_time"), ts("end_time"), ts("create_time"), ts("update_time")
    assert start and end and created and updated, "snapshot lacks a timestamp"
    return Booking(
        id=data["id"],
        customer_id=data["customer_id"],
        provider_id=data["provider_id"],
        service_id=data["service_id"],
        start_time=start,
        end_time=end,
        notes=data["notes"],
        create_time=created,
        update_time=updated,
        version=data["version"],
        delete_time=ts("delete_time"),
        deleted_by=deleted_by,
        deletion_reason=data["deletion_reason"],
        state=BookingState(data.get("state", "CONFIRMED")),  # snapshots from before holds have none
        expire_time=ts("expire_time"),
    )


def audit_from_record(record: Record) -> AuditEntry:
    snapshot = record["snapshot"]
    return AuditEntry(
        id=str(record["id"]),
        booking_id=str(record["booking_id"]),
        action=AuditAction(record["action"]),
        actor=Actor(record["actor_id"], record["actor_name"], Role(record["actor_role"])),
        reason=record["reason"],
        create_time=record["create_time"],
        snapshot=booking_from_json(json.loads(snapshot)) if snapshot is not None else None,
        seq=record["seq"],
        update_mask=tuple(record["update_mask"] or ()),
        previous_time=(record["previous_start"], record["previous_end"]) if record["previous_start"] else None,
    )


def schedule_from_record(record: Record) -> Schedule:
    weekly = json.loads(record["weekly_hours"])
    overrides = json.loads(record["date_overrides"])
    return Schedule(
        provider_id=record["provider_id"],
        time_zone=record["time_zone"],
        weekly_hours=tuple(WorkingHours(w["day"], LocalRange(w["start"], w["end"])) for w in weekly),
        date_overrides=tuple(
            DateOverride(date.fromisoformat(o["date"]), tuple(LocalRange(h["start"], h["end"]) for h in o["hours"]))
            for o in overrides
        ),
        buffer_before=record["buffer_before"],
        buffer_after=record["buffer_after"],
        minimum_notice=record["minimum_notice"],
        booking_horizon=record["booking_horizon"],
        version=record["version"],
        update_time=record["update_time"],
    )


def schedule_from_json(data: dict[str, Any]) -> Schedule:
    """A schedule as sql._schedule_json gives it (its durations in seconds)."""

    def seconds(key: str) -> timedelta:
        return timedelta(seconds=float(data[key]))

    return Schedule(
        provider_id=data["provider_id"],
        time_zone=data["time_zone"],
        weekly_hours=tuple(WorkingHours(w["day"], LocalRange(w["start"], w["end"])) for w in data["weekly_hours"]),
        date_overrides=tuple(
            DateOverride(date.fromisoformat(o["date"]), tuple(LocalRange(h["start"], h["end"]) for h in o["hours"]))
            for o in data["date_overrides"]
        ),
        buffer_before=seconds("buffer_before"),
        buffer_after=seconds("buffer_after"),
        minimum_notice=seconds("minimum_notice"),
        booking_horizon=seconds("booking_horizon"),
        version=data["version"],
        update_time=datetime.fromisoformat(data["update_time"]),
    )


def schedule_json(schedule: Schedule) -> tuple[str, str]:
    """The weekly hours and the date overrides as stored (JSON)."""
    weekly = [{"day": w.day, "start": w.hours.start, "end": w.hours.end} for w in schedule.weekly_hours]
    overrides = [
        {"date": o.date.isoformat(), "hours": [{"start": h.start, "end": h.end} for h in o.hours]}
        for o in schedule.date_overrides
    ]
    return json.dumps(weekly), json.dumps(overrides)
