"""bookingctl: the booking backend from a terminal.

    bookingctl [--target HOST:PORT] [--notify-target HOST:PORT] [--token T] [-o table|json|yaml] COMMAND ...

Commands: token, health, get, list, list-deleted, create, delete, restore, hard-delete, audit, purge, watch.
The token comes from --token or env BOOKING_TOKEN (`bookingctl token` makes one from env JWT_SECRET). Output is
a table on a terminal and JSON otherwise (-o chooses; -o id prints only ids, for scripts); JSON shows every
field, zeros and empty lists included.
Errors print the status, the reason and any field violations on stderr. Exit status: 0 done, 1 the server
refused or failed the call, 2 bad usage or a purge not confirmed, 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime
from typing import Any

import grpc
import yaml
from google.protobuf import json_format
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rich.console import Console
from rich.table import Table

from booking_api.booking.v1 import booking_pb2, events_pb2
from booking_client._client import BookingClient, Tls
from booking_client._errors import BookingError

ROLES = ("user", "provider", "admin")
EVENT_TYPES = {value: name.removeprefix("BOOKING_EVENT_TYPE_") for name, value in events_pb2.BookingEventType.items()}


class Usage(Exception):
    """A command line that cannot be run as given (exit status 2)."""


def _time(text: str) -> datetime:
    """An ISO 8601 time; one without a zone is UTC."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from exc
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(
        prog="bookingctl", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    main.add_argument(
        "--target",
        default=os.environ.get("BOOKING_TARGET", "127.0.0.1:50051"),
        help="booking service (env BOOKING_TARGET; default 127.0.0.1:50051)",
    )
    main.add_argument(
        "--notify-target",
        default=os.environ.get("BOOKING_NOTIFY_TARGET", ""),
        help="notify service, for watch (env BOOKING_NOTIFY_TARGET; default: port 50052 of --target's host)",
    )
    main.add_argument("--token", default=os.environ.get("BOOKING_TOKEN", ""), help="bearer token (env BOOKING_TOKEN)")
    main.add_argument(
        "-o",
        "--output",
        choices=("table", "json", "yaml", "id"),
        default=None,
        help="default: table on a terminal, else json; id: only the ids, one per line (for scripts)",
    )
    main.add_argument("--timeout", type=float, default=10.0, help="seconds per call (default 10)")
    tls = main.add_argument_group("TLS (any of these switches TLS on)")
    tls.add_argument("--tls", action="store_true", help="TLS, trusting the system's CAs")
    tls.add_argument("--cacert", help="PEM CA to trust")
    tls.add_argument("--cert", help="PEM client certificate (mutual TLS)")
    tls.add_argument("--key", help="PEM key of --cert")
    tls.add_argument("--server-name", help="the name the server's certificate must have")
    commands = main.add_subparsers(dest="command", required=True, metavar="COMMAND")

    token = commands.add_parser("token", help="print a token signed with env JWT_SECRET (development)")
    token.add_argument("--sub", required=True)
    token.add_argument("--role", required=True, choices=ROLES)
    token.add_argument("--name", default=None)
    token.add_argument("--ttl", type=int, default=3600, help="seconds (default 3600)")

    health = commands.add_parser("health", help="the health of both services (exit 1 unless all SERVING)")
    health.add_argument("--service", default="", help="a health name (default: the whole server)")

    commands.add_parser("get", help="one booking").add_argument("booking_id")
    for name, text in (("list", "bookings you may see"), ("list-deleted", "soft-deleted bookings (admins)")):
        listing = commands.add_parser(name, help=text)
        listing.add_argument("--customer", default="")
        listing.add_argument("--provider", default="")
        if name == "list":
            listing.add_argument("--show-deleted", action="store_true")

    create = commands.add_parser("create", help="book a provider's time")
    create.add_argument("--provider", required=True)
    create.add_argument("--start", required=True, type=_time, help="ISO 8601 (no zone: UTC)")
    create.add_argument("--end", required=True, type=_time)
    create.add_argument("--customer", default="", help="(admins and providers; users book for themselves)")
    create.add_argument("--service", required=True, help="the service booked (e.g. haircut)")
    create.add_argument("--notes", default="")
    create.add_argument("--request-id", default=None, help="makes a repeated create return the same booking")

    delete = commands.add_parser("delete", help="soft-delete a booking")
    delete.add_argument("booking_id")
    delete.add_argument("--reason", default="")
    delete.add_argument("--etag", default="", help="only if the booking is still at this etag")
    restore = commands.add_parser("restore", help="restore a soft-deleted booking")
    restore.add_argument("booking_id")
    restore.add_argument("--etag", default="")
    commands.add_parser("hard-delete", help="permanently remove a soft-deleted booking (admins)").add_argument(
        "booking_id"
    )
    commands.add_parser("audit", help="a booking's audit trail").add_argument("booking_id")

    purge = commands.add_parser("purge", help="hard-delete what was soft-deleted before a time (admins)")
    purge.add_argument("--before", required=True, type=_time, help="ISO 8601 (no zone: UTC)")
    purge.add_argument("--force", action="store_true", help="purge (without: only preview)")
    purge.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    watch = commands.add_parser("watch", help="follow changes, one line each, resuming by itself")
    watch.add_argument("--resume-after", default=None, help="an event_id: start after it")
    watch.add_argument("--customer", default="")
    watch.add_argument("--provider", default="")
    watch.add_argument("--booking", default="")
    watch.add_argument("--limit", type=int, default=0, help="stop after this many events (0: never)")
    return main


# --- output -------------------------------------------------------------------------------------------------


def as_dict(message: Message) -> dict[str, Any]:
    """Every field, zeros and empty lists included (what grpcurl leaves out), with the .proto's names."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


class Output:
    def __init__(self, kind: str | None) -> None:
        # Not at a terminal (-o table into a file or pipe), tables get room enough for every id.
        self.console = Console(width=None if sys.stdout.isatty() else 240)
        self.kind = kind or ("table" if sys.stdout.isatty() else "json")

    def document(self, value: Any, table: Table | None = None) -> None:
        if self.kind == "id":
            rows = value if isinstance(value, list) else [value]
            sys.stdout.write("".join(f"{row.get('id') or row.get('booking_id', '')}\n" for row in rows))
        elif self.kind == "table" and table is not None:
            self.console.print(table)
        elif self.kind == "yaml":
            sys.stdout.write(yaml.safe_dump(value, sort_keys=False))
        else:
            sys.stdout.write(json.dumps(value, indent=2) + "\n")

    def bookings(self, bookings: list[booking_pb2.Booking]) -> None:
        table = Table()
        table.add_column("ID", no_wrap=True, min_width=36)
        for header in ("CUSTOMER", "PROVIDER", "SERVICE", "START", "END", "STATE", "ETAG"):
            table.add_column(header)
        for b in bookings:
            state = "deleted" if b.HasField("delete_time") else "active"
            table.add_row(b.id, b.customer_id, b.provider_id, b.service_id, _iso(b.start_time), _iso(b.end_time),
                          state, b.etag)  # fmt: skip
        self.document([as_dict(b) for b in bookings], table)


def _iso(stamp: Any) -> str:
    return str(stamp.ToDatetime(tzinfo=UTC).isoformat().replace("+00:00", "Z"))


def _role(role: booking_pb2.Role.ValueType) -> str:
    return booking_pb2.Role.Name(role).removeprefix("ROLE_").lower()


def event_line(event: events_pb2.BookingEvent) -> str:
    b = event.booking
    actor = f"{event.actor.id} ({_role(event.actor.role)})"
    return (
        f"{event.event_id}  {EVENT_TYPES.get(event.type, event.type):<12}  {b.id}  provider={b.provider_id} "
        f"customer={b.customer_id}  {_iso(b.start_time)}..{_iso(b.end_time)}  by {actor}"
    )


def print_error(error: BookingError) -> None:
    reason = f" ({error.reason})" if error.reason else ""
    print(f"error: {error.code.name}{reason}: {error.message}", file=sys.stderr)
    if error.field_violations:
        fields = "; ".join(f"{v.field}: {v.description}" for v in error.field_violations)
        print(f"  fields: {fields}", file=sys.stderr)


# --- commands -------------------------------------------------------------------------------------------------


async def collect(items: AsyncIterator[Any]) -> list[Any]:
    return [item async for item in items]


async def run(args: argparse.Namespace, out: Output) -> int:
    if args.command == "token":
        return token(args)
    tls = None
    if args.tls or args.cacert or args.cert or args.key:
        tls = Tls(ca_file=args.cacert, cert_file=args.cert, key_file=args.key, server_name=args.server_name)
    notify = args.notify_target or f"{args.target.rsplit(':', 1)[0]}:50052"
    if args.command == "health":
        return await health(args, tls, notify, out)
    if not args.token:
        raise Usage("no token: pass --token or set BOOKING_TOKEN (bookingctl token makes one)")
    async with BookingClient(args.target, notify, token=args.token, tls=tls, timeout=args.timeout) as client:
        command = args.command
        if command == "get":
            out.bookings([await client.get_booking(args.booking_id)])
        elif command == "list":
            filters = {"customer_id": args.customer, "provider_id": args.provider}
            out.bookings(await collect(client.list_bookings(show_deleted=args.show_deleted, **filters)))
        elif command == "list-deleted":
            out.bookings(await collect(client.list_deleted_bookings(customer_id=args.customer,
                                                                    provider_id=args.provider)))  # fmt: skip
        elif command == "create":
            out.bookings([await client.create_booking(
                provider_id=args.provider, start_time=args.start, end_time=args.end, customer_id=args.customer,
                service_id=args.service, notes=args.notes, request_id=args.request_id,
            )])  # fmt: skip
        elif command == "delete":
            out.bookings([await client.delete_booking(args.booking_id, reason=args.reason, etag=args.etag)])
        elif command == "restore":
            out.bookings([await client.restore_booking(args.booking_id, etag=args.etag)])
        elif command == "hard-delete":
            removed = await client.hard_delete_booking(args.booking_id)
            table = Table("HARD-DELETED")
            table.add_row(removed)
            out.document({"booking_id": removed}, table)
        elif command == "audit":
            await audit(client, args.booking_id, out)
        elif command == "purge":
            return await purge(client, args, out)
        elif command == "watch":
            await watch(client, args, out)
    return 0


def token(args: argparse.Namespace) -> int:
    import jwt

    secret = os.environ.get("JWT_SECRET", "")
    if not secret:
        raise Usage("JWT_SECRET is not set: bookingctl token signs with it")
    now = int(time.time())
    claims = {"sub": args.sub, "name": args.name or args.sub, "role": args.role, "iat": now, "exp": now + args.ttl}
    print(jwt.encode(claims, secret, algorithm="HS256"))
    return 0


async def health(args: argparse.Namespace, tls: Tls | None, notify: str, out: Output) -> int:
    rows: list[dict[str, str]] = []
    for name, target in (("booking", args.target), ("notify", notify)):
        async with BookingClient(target, token="", tls=tls) as client:
            channel = client._channel(target)
            try:
                answer = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
                )
                status = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
            except grpc.aio.AioRpcError as exc:
                status = exc.code().name
        rows.append({"service": name, "target": target, "status": status})
    table = Table("SERVICE", "TARGET", "STATUS")
    for row in rows:
        table.add_row(row["service"], row["target"], row["status"])
    out.document(rows, table)
    return 0 if all(row["status"] == "SERVING" for row in rows) else 1


async def audit(client: BookingClient, booking_id: str, out: Output) -> None:
    entries = await collect(client.list_booking_audit_entries(booking_id))
    table = Table("TIME", "ACTION", "ACTOR", "ROLE", "REASON")
    for e in entries:
        action = booking_pb2.AuditAction.Name(e.action).removeprefix("AUDIT_ACTION_")
        table.add_row(_iso(e.create_time), action, e.actor.id, _role(e.actor.role), e.reason)
    out.document([as_dict(e) for e in entries], table)


async def purge(client: BookingClient, args: argparse.Namespace, out: Output) -> int:
    preview = await client.purge_deleted_bookings(args.before)
    summary = Table("WOULD PURGE", "SOFT-DELETED BEFORE", "SAMPLE")
    summary.add_row(str(preview.count), args.before.isoformat(), "\n".join(preview.sample[:10]))
    if not args.force:
        out.document({"purge_count": preview.count, "purge_sample": preview.sample, "force": False}, summary)
        return 0
    if preview.count and not args.yes:
        if out.kind == "table":
            Console(stderr=True).print(summary)
        if not sys.stdin.isatty():
            raise Usage(f"would purge {preview.count} bookings: confirm with --yes (stdin is not a terminal)")
        answer = await asyncio.to_thread(
            input, f"Permanently delete {preview.count} bookings soft-deleted before {args.before.isoformat()}? [y/N] "
        )
        if answer.strip().lower() not in ("y", "yes"):
            print("not purged", file=sys.stderr)
            return 2
    spinner = out.console.status(f"purging {preview.count} bookings ...")
    with spinner if out.kind == "table" else contextlib.nullcontext():
        done = await client.purge_deleted_bookings(args.before, force=True)
    result = Table("PURGED", "SOFT-DELETED BEFORE", "SAMPLE")
    result.add_row(str(done.count), args.before.isoformat(), "\n".join(done.sample[:10]))
    out.document({"purge_count": done.count, "purge_sample": done.sample, "force": True}, result)
    return 0


async def watch(client: BookingClient, args: argparse.Namespace, out: Output) -> None:
    seen = 0
    events = client.watch(resume_after=args.resume_after, customer_id=args.customer, provider_id=args.provider,
                          booking_id=args.booking)  # fmt: skip
    async for event in events:
        if out.kind == "table":
            print(event_line(event), flush=True)
        elif out.kind == "id":
            print(event.event_id, flush=True)
        elif out.kind == "yaml":
            print(yaml.safe_dump([as_dict(event)], sort_keys=False), end="", flush=True)
        else:
            print(json.dumps(as_dict(event)), flush=True)
        seen += 1
        if args.limit and seen >= args.limit:
            return


def main(argv: Iterable[str] | None = None) -> int:
    args = parser().parse_args(list(argv) if argv is not None else None)
    out = Output(args.output)
    try:
        return asyncio.run(run(args, out))
    except BookingError as error:
        print_error(error)
        return 1
    except Usage as problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
