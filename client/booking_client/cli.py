"""bookingctl: the booking backend from a terminal.

    bookingctl COMMAND [ARGS] [--context NAME] [--target HOST:PORT] [--token T] [-o table|wide|json|yaml|id] ...

Global flags go before or after the command. Where to call and with which token comes from flags, a saved
context (`bookingctl config`), or env BOOKING_TARGET, BOOKING_NOTIFY_TARGET and BOOKING_TOKEN (`bookingctl
token` makes one from env JWT_SECRET). Output is a table on a terminal and JSON otherwise; -o wide shows every
column, -o id only ids (for scripts); JSON shows every field, zeros and empty lists included.
Errors print the status, the reason, the flags at fault and the request id on stderr. Exit status: 0 done,
1 the server refused or failed the call, 2 bad usage or a deletion not confirmed, 130 interrupted.
Completion: eval "$(bookingctl completion bash)" (or zsh).
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
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import grpc
import yaml
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc

from booking_api.booking.v1 import booking_pb2
from booking_client import _cli_commands
from booking_client._cli_config import ConfigError, Settings, resolve
from booking_client._cli_output import Output, as_dict, event_line, iso, plural, print_error, role_name, table
from booking_client._cli_parser import SERVICE_HEADER, parser
from booking_client._cli_prompt import NotConfirmed, Usage, confirm
from booking_client._client import BookingClient
from booking_client._errors import BookingError, NotFound
from booking_client._options import Tls

# --- commands -------------------------------------------------------------------------------------------------


async def collect(items: AsyncIterator[Any], limit: int = 0) -> list[Any]:
    found = []
    async for item in items:
        found.append(item)
        if limit and len(found) >= limit:
            break
    return found


def client_for(settings: Settings, verbose: bool) -> BookingClient:
    tls = None
    if settings.tls:
        tls = Tls(ca_file=settings.cacert, cert_file=settings.cert, key_file=settings.key,
                  server_name=settings.server_name)  # fmt: skip
    return BookingClient(settings.target, settings.notify_target, token=settings.token, tls=tls,
                         timeout=settings.timeout, interceptors=_cli_commands.verbose() if verbose else ())  # fmt: skip


async def run(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    if args.command == "health":
        return await health(args, settings, out)
    async with client_for(settings, bool(args.verbose)) as client:
        command = args.command
        if command == "get":
            return await get(client, args.booking_ids, out)
        if command == "list":
            if (args.since is None) != (args.until is None):
                raise Usage("--from and --to go together")
            window = (args.since, args.until) if args.since else None
            listed = client.list_bookings(
                customer_id=args.customer, provider_id=args.provider, show_deleted=args.show_deleted, overlaps=window
            )
            out.bookings(await collect(listed, args.limit))
        elif command == "list-deleted":
            deleted = client.list_deleted_bookings(customer_id=args.customer, provider_id=args.provider)
            out.bookings(await collect(deleted, args.limit))
        elif command == "create":
            out.bookings([await client.create_booking(
                provider_id=args.provider, start_time=args.start, end_time=args.end, customer_id=args.customer,
                service_id=args.service, notes=args.notes, request_id=args.request_id,
            )], one=True)  # fmt: skip
        elif command == "hold":
            out.bookings([await client.hold_slot(
                provider_id=args.provider, start_time=args.start, end_time=args.end, customer_id=args.customer,
                service_id=args.service, ttl=args.ttl, notes=args.notes, request_id=args.request_id,
            )], one=True)  # fmt: skip
        elif command == "confirm":
            confirmed = await client.confirm_booking(args.booking_id, notes=args.notes, etag=args.etag)
            out.bookings([confirmed], one=True)
        elif command == "reschedule":
            moved = await client.reschedule(args.booking_id, args.start, args.end, etag=args.etag)
            out.bookings([moved], one=True)
        elif command == "free":
            await free(client, args, out)
        elif command == "schedule":
            await schedule(client, args, out)
        elif command == "delete":
            out.bookings([await client.delete_booking(args.booking_id, reason=args.reason, etag=args.etag)], one=True)
        elif command == "restore":
            out.bookings([await client.restore_booking(args.booking_id, etag=args.etag)], one=True)
        elif command == "hard-delete":
            removed = await client.hard_delete_booking(args.booking_id)
            grid = table("HARD-DELETED")
            grid.add_row(removed)
            out.document({"booking_id": removed}, grid)
        elif command == "audit":
            await audit(client, args.booking_id, out)
        elif command == "purge":
            await purge(client, args, out)
        elif command == "watch":
            await watch(client, args, out)
    return 0


async def get(client: BookingClient, booking_ids: list[str], out: Output) -> int:
    """The bookings found, in the order named; an error line for each one that is not (exit 1 if any)."""
    found, status = [], 0
    results = await asyncio.gather(*(client.get_booking(i) for i in booking_ids), return_exceptions=True)
    for result in results:
        if isinstance(result, NotFound) and len(booking_ids) > 1:
            print_error(result)
            status = 1
        elif isinstance(result, BaseException):
            raise result
        else:
            found.append(result)
    if found:
        out.bookings(found, one=len(booking_ids) == 1)
    return status


def token(args: argparse.Namespace) -> int:
    import jwt

    secret = os.environ.get("JWT_SECRET", "")
    if not secret:
        raise Usage("JWT_SECRET is not set: bookingctl token signs with it")
    now = int(time.time())
    claims = {"sub": args.sub, "name": args.name or args.sub, "role": args.role, "iat": now, "exp": now + args.ttl}
    print(jwt.encode(claims, secret, algorithm="HS256"))
    return 0


async def health(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    """Each service's health at its target; at one address (the balancer), the header routes each check."""
    rows: list[dict[str, str]] = []
    for name, target in (("booking", settings.target), ("notify", settings.notify_target)):
        async with client_for(settings, bool(args.verbose)) as client:
            try:
                answer = await health_pb2_grpc.HealthStub(client._channel(target)).Check(
                    health_pb2.HealthCheckRequest(service=args.service),
                    timeout=settings.timeout,
                    metadata=((SERVICE_HEADER, name),),
                )
                status = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
            except grpc.aio.AioRpcError as exc:
                status = exc.code().name
        rows.append({"service": name, "target": target, "status": status})
    grid = table("SERVICE", "TARGET", "STATUS")
    for row in rows:
        grid.add_row(row["service"], row["target"], row["status"])
    out.document(rows, grid)
    return 0 if all(row["status"] == "SERVING" for row in rows) else 1


async def free(client: BookingClient, args: argparse.Namespace, out: Output) -> None:
    """The free intervals, as a table (FROM, TO, LENGTH) or a list of {start_time, end_time}."""
    found = await client.list_available_slots(args.provider, args.since, args.until, args.duration, slot_step=args.step)

    def utc(value: datetime) -> str:
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")

    if args.slots:  # the starts, shown in the provider's zone too
        zone = ZoneInfo(found.time_zone)
        grid = table("START", f"LOCAL ({found.time_zone})")
        for start in found.slot_starts:
            grid.add_row(utc(start), start.astimezone(zone).isoformat())
        out.document([utc(start) for start in found.slot_starts], grid)
        return
    grid = table("FROM", "TO", "LENGTH")
    for start, end in found.free_intervals:
        grid.add_row(utc(start), utc(end), str(end - start))
    out.document([{"start_time": utc(start), "end_time": utc(end)} for start, end in found.free_intervals], grid)


DAYS = ("", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def _hhmm(value: Any) -> str:
    return f"{value.hours:02d}:{value.minutes:02d}" + (f":{value.seconds:02d}" if value.seconds else "")


async def schedule(client: BookingClient, args: argparse.Namespace, out: Output) -> None:
    """Show a provider's schedule, or replace it from a file in the shape `schedule get -o yaml` prints (its
    etag, if kept, makes the change conditional)."""
    if args.action == "get":
        found = await client.get_provider_schedule(args.provider)
    else:
        try:
            text = sys.stdin.read() if args.file == "-" else await asyncio.to_thread(Path(args.file).read_text)
            given = json_format.ParseDict(yaml.safe_load(text) or {}, booking_pb2.ProviderSchedule())
        except (OSError, yaml.YAMLError, json_format.ParseError) as exc:
            raise Usage(f"{args.file}: not a schedule ({exc})") from exc
        found = await client.update_provider_schedule(given)
    weekly = ", ".join(f"{DAYS[w.day]} {_hhmm(w.start)}-{_hhmm(w.end)}" for w in found.weekly_hours)
    overrides = ", ".join(
        f"{o.date.year:04d}-{o.date.month:02d}-{o.date.day:02d} "
        + (" ".join(f"{_hhmm(h.start)}-{_hhmm(h.end)}" for h in o.hours) or "closed")
        for o in found.date_overrides
    )
    grid = table("PROVIDER", "TIME ZONE", "WEEKLY HOURS", "OVERRIDES", "BUFFERS", "NOTICE", "HORIZON", "ETAG")
    buffers = f"{found.buffer_before.ToTimedelta()} / {found.buffer_after.ToTimedelta()}"
    horizon = str(found.booking_horizon.ToTimedelta()) if found.booking_horizon.ToTimedelta() else "none"
    grid.add_row(found.provider_id, found.time_zone, weekly or "closed", overrides or "none", buffers,
                 str(found.minimum_notice.ToTimedelta()), horizon, found.etag)  # fmt: skip
    out.document(as_dict(found), grid)


async def audit(client: BookingClient, booking_id: str, out: Output) -> None:
    entries = await collect(client.list_booking_audit_entries(booking_id))
    grid = table("TIME", "ACTION", "ACTOR", "ROLE", "REASON")
    for e in entries:
        action = booking_pb2.AuditAction.Name(e.action).removeprefix("AUDIT_ACTION_")
        grid.add_row(iso(e.create_time), action, e.actor.id, role_name(e.actor.role), e.reason)
    out.document([as_dict(e) for e in entries], grid)


def purge_summary(heading: str, count: int, before: datetime, sample: list[str]) -> Any:
    grid = table("", "")
    grid.show_header = False
    grid.add_row(heading, plural(count, "booking"))
    grid.add_row("soft-deleted before", before.isoformat())
    grid.add_row("sample" if len(sample) < count else "ids", "\n".join(sample[:10]) or "-")
    return grid


async def purge(client: BookingClient, args: argparse.Namespace, out: Output) -> None:
    if not args.force:
        preview = await client.purge_deleted_bookings(args.before)
        summary = purge_summary("would purge", preview.count, args.before, preview.sample)
        out.document({"purge_count": preview.count, "purge_sample": preview.sample, "force": False}, summary)
        return
    spinner = out.console.status("purging ...")
    with spinner if out.tabular else contextlib.nullcontext():
        done = await client.purge_deleted_bookings(args.before, force=True)
    result = purge_summary("purged", done.count, args.before, done.sample)
    out.document({"purge_count": done.count, "purge_sample": done.sample, "force": True}, result)


async def watch(client: BookingClient, args: argparse.Namespace, out: Output) -> None:
    def progress(line: str) -> None:
        print(f"watch: {line}", file=sys.stderr, flush=True)

    seen = 0
    events = client.watch(resume_after=args.resume_after, customer_id=args.customer, provider_id=args.provider,
                          booking_id=args.booking, progress=progress)  # fmt: skip
    async for event in events:
        if out.tabular:
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


# --- confirmation, outside the event loop (Ctrl-C at the prompt must end the program at once) ---------------


def confirm_deletion(args: argparse.Namespace, settings: Settings, out: Output) -> None:
    """hard-delete and purge --force ask first at a terminal, unless --yes; a purge shows its preview."""
    if args.command == "hard-delete" and not args.yes:
        confirm(f"Permanently delete booking {args.booking_id}? It cannot be restored", "not deleted")
    elif args.command == "purge" and args.force and not args.yes:

        async def preview() -> Any:
            async with client_for(settings, bool(args.verbose)) as client:
                return await client.purge_deleted_bookings(args.before)

        found = asyncio.run(preview())
        if found.count:
            if out.tabular:
                out.console.print(purge_summary("would purge", found.count, args.before, found.sample))
            before = args.before.isoformat()
            confirm(f"Permanently delete {plural(found.count, 'booking')} soft-deleted before {before}?", "not purged")


def main(argv: Iterable[str] | None = None) -> int:
    args = parser(__doc__).parse_args(list(argv) if argv is not None else None)
    out = Output(args.output)
    try:
        if args.command == "token":
            return token(args)
        if args.command in ("config", "completion"):
            return _cli_commands.local_command(args, parser(__doc__))
        settings = resolve(vars(args), need_token=args.command != "health")
        confirm_deletion(args, settings, out)
        return asyncio.run(run(args, settings, out))
    except BookingError as error:
        print_error(error)
        return 1
    except (Usage, ConfigError) as problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    except NotConfirmed as refused:
        print(refused, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
