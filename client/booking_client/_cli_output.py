"""bookingctl's output: tables that fit an 80-column terminal (`-o wide` for every column), JSON, YAML, ids, and
errors on stderr in the command line's own words (its flags, not the proto's field paths)."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from datetime import UTC
from typing import Any

import yaml
from google.protobuf import json_format
from google.protobuf.message import Message
from rich.console import Console
from rich.table import Table

from booking_api.booking.v1 import booking_pb2, events_pb2
from booking_client._errors import BookingError

EVENT_TYPES = {value: name.removeprefix("BOOKING_EVENT_TYPE_") for name, value in events_pb2.BookingEventType.items()}
KINDS = ("table", "wide", "json", "yaml", "id")

# The request fields bookingctl fills from its flags: an error about one names the flag.
FLAGS = {
    "booking.customer_id": "--customer",
    "booking.provider_id": "--provider",
    "booking.service_id": "--service",
    "booking.start_time": "--start",
    "booking.end_time": "--end",
    "booking.notes": "--notes",
    "booking.etag": "--etag",
    "overlaps.start_time": "--from",
    "overlaps.end_time": "--to",
    "interval.start_time": "--from",
    "interval.end_time": "--to",
    "interval": "--from..--to",
    "duration": "--duration",
    "request_id": "--request-id",
    "etag": "--etag",
    "reason": "--reason",
    "purge_time": "--before",
    "resume_after": "--resume-after",
    "ttl": "--ttl",
    "notes": "--notes",
    # as a message names them ("must be after start_time")
    "customer_id": "--customer",
    "provider_id": "--provider",
    "service_id": "--service",
    "start_time": "--start",
    "end_time": "--end",
}

_FIELDS = re.compile("|".join(rf"(?<![\w.]){re.escape(field)}(?!\w)" for field in FLAGS))


def as_dict(message: Message) -> dict[str, Any]:
    """Every field, zeros and empty lists included (what grpcurl leaves out), with the .proto's names."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def table(*headers: str, gap: int = 2) -> Table:
    """A borderless table (kubectl's look): `gap` spaces between columns, long values folded, never cut."""
    grid = Table(box=None, pad_edge=False, padding=(0, gap, 0, 0), header_style="bold")
    for header in headers:
        grid.add_column(header, overflow="fold")
    return grid


def iso(stamp: Any) -> str:
    return str(stamp.ToDatetime(tzinfo=UTC).isoformat().replace("+00:00", "Z"))


def _start(stamp: Any) -> str:
    return str(stamp.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M"))


def _state(booking: booking_pb2.Booking, *, wide: bool = False) -> str:
    """deleted, held (a hold; wide: until when, UTC) or active (a confirmed booking)."""
    if booking.HasField("delete_time"):
        return "deleted"
    if booking.state == booking_pb2.BOOKING_STATE_HELD:
        return f"held until {iso(booking.expire_time)}" if wide else "held"
    return "active"


def role_name(role: booking_pb2.Role.ValueType) -> str:
    return booking_pb2.Role.Name(role).removeprefix("ROLE_").lower()


class Output:
    def __init__(self, kind: str | None) -> None:
        # Rich takes the terminal's width, or COLUMNS, or 80; -o wide's lines are as long as their values.
        self.kind = kind or ("table" if sys.stdout.isatty() else "json")
        self.console = Console(width=1000) if self.kind == "wide" else Console()

    @property
    def tabular(self) -> bool:
        return self.kind in ("table", "wide")

    def document(self, value: Any, grid: Table | None = None) -> None:
        if self.kind == "id":
            rows = value if isinstance(value, list) else [value]
            sys.stdout.write("".join(f"{row.get('id') or row.get('booking_id', '')}\n" for row in rows))
        elif self.tabular and grid is not None:
            self.console.print(grid)
        elif self.kind == "yaml":
            sys.stdout.write(yaml.safe_dump(value, sort_keys=False))
        else:
            sys.stdout.write(json.dumps(value, indent=2) + "\n")

    def bookings(self, bookings: Sequence[booking_pb2.Booking], *, one: bool = False) -> None:
        """A table of `bookings`; as JSON or YAML a list, or the booking itself when the command names `one`."""
        if self.kind == "wide":
            grid = table("ID", "CUSTOMER", "PROVIDER", "SERVICE", "START", "END", "STATE", "ETAG", "NOTES")
            for b in bookings:
                grid.add_row(b.id, b.customer_id, b.provider_id, b.service_id, iso(b.start_time), iso(b.end_time),
                             _state(b, wide=True), b.etag, b.notes)  # fmt: skip
        else:  # what fits 80 columns with whole ids (36): the state only where one is not active; the rest: wide
            shown = any(_state(b) != "active" for b in bookings)
            grid = table("ID", "PROVIDER", "CUSTOMER", "START (UTC)", *(["STATE"] if shown else []), gap=1)
            for b in bookings:
                state = [_state(b)] if shown else []
                grid.add_row(b.id, b.provider_id, b.customer_id, _start(b.start_time), *state)
        for column in grid.columns:  # names fold (never under their header's width); ids, times, states do not
            header = str(column.header)
            column.no_wrap = header not in ("PROVIDER", "CUSTOMER", "SERVICE", "NOTES")
            column.min_width = len(header)
        rows = [as_dict(b) for b in bookings]
        self.document(rows[0] if one and len(rows) == 1 else rows, grid)


def event_line(event: events_pb2.BookingEvent) -> str:
    b = event.booking
    actor = f"{event.actor.id} ({role_name(event.actor.role)})"
    return (
        f"{event.event_id}  {EVENT_TYPES.get(event.type, event.type):<12}  {b.id}  provider={b.provider_id} "
        f"customer={b.customer_id}  {iso(b.start_time)}..{iso(b.end_time)}  by {actor}"
    )


def in_flags(text: str) -> str:
    """`text` with the request fields bookingctl fills from flags named as those flags."""
    return _FIELDS.sub(lambda found: FLAGS[found.group(0)], text)


def print_error(error: BookingError) -> None:
    """One line (status, reason if it says more, message), a line of field problems the message does not
    already name, and the request id (the server's log lines of the call carry it)."""
    reason = f" ({error.reason})" if error.reason and error.reason != error.code.name else ""
    message = in_flags(error.message)
    print(f"error: {error.code.name}{reason}: {message}", file=sys.stderr)
    problems = [in_flags(f"{v.field}: {v.description}") for v in error.field_violations]
    unsaid = [problem for problem in problems if problem not in message]
    if unsaid:
        print(f"  fields: {'; '.join(unsaid)}", file=sys.stderr)
    if error.request_id:
        print(f"  request id: {error.request_id}", file=sys.stderr)
