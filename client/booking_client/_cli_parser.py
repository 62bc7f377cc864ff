"""bookingctl's command line: its commands, their flags, and the global flags every command takes."""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime, timedelta
from importlib import metadata
from typing import Any

from booking_client import _cli_commands
from booking_client._cli_config import suggestion
from booking_client._cli_output import KINDS

ROLES = ("user", "provider", "admin")
# The balancer routes health and reflection calls by this header (deploy/nginx/nginx.conf; default: booking).
SERVICE_HEADER = "x-service"


def _time(text: str) -> datetime:
    """An ISO 8601 time; one without a zone is UTC."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from exc
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _duration(text: str) -> timedelta:
    """A duration such as 30m, 1h30m, 90s or 2h."""
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text.strip())
    if not text.strip() or parts is None:
        raise argparse.ArgumentTypeError(f"not a duration such as 30m, 1h30m or 90s: {text!r}")
    hours, minutes, seconds = (int(p or 0) for p in parts.groups())
    return timedelta(hours=hours, minutes=minutes, seconds=seconds)


class Parser(argparse.ArgumentParser):
    """argparse, with a suggestion for a mistyped flag or command."""

    def error(self, message: str) -> Any:
        if "unrecognized arguments: " in message:
            words = message.split("unrecognized arguments: ", 1)[1].split()
            options = [o for p in _parsers(self) for a in p._actions for o in a.option_strings]
            message += "".join(suggestion(w.split("=")[0], options) for w in words if w.startswith("-"))[:200]
        elif "invalid choice: " in message:
            word = message.split("invalid choice: ", 1)[1].split("'")[1]
            message += suggestion(word, [c for a in self._actions for c in (a.choices or ())])
        super().error(message)


def _parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found += _parsers(child)
    return found


def _global_flags(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """The flags every command takes, before or after it: on the main parser (default None) and on each
    command's (SUPPRESS, so a command's parser does not overwrite what was given before the command)."""
    default = argparse.SUPPRESS if suppress else None
    group = parser.add_argument_group("global flags")
    group.add_argument("--context", default=default, help="a saved context (bookingctl config)")
    group.add_argument("--target", default=default, help="booking service (env BOOKING_TARGET; 127.0.0.1:50051)")
    group.add_argument(
        "--notify-target",
        default=default,
        help="notify service (env BOOKING_NOTIFY_TARGET; default: --target, or 127.0.0.1:50052 with make run's)",
    )
    group.add_argument("--token", default=default, help="bearer token (env BOOKING_TOKEN)")
    group.add_argument("-o", "--output", choices=KINDS, default=default, help="default: table at a terminal, else json")
    group.add_argument("--timeout", type=float, default=default, help="seconds per call (default 10)")
    group.add_argument("-v", "--verbose", action="store_true", default=default, help="each call on stderr")
    group.add_argument("--tls", action="store_true", default=default, help="TLS, trusting the system's CAs")
    group.add_argument("--cacert", default=default, help="PEM CA to trust (TLS)")
    group.add_argument("--cert", default=default, help="PEM client certificate (mutual TLS)")
    group.add_argument("--key", default=default, help="PEM key of --cert")
    group.add_argument("--server-name", default=default, help="the name the server's certificate must have")


def parser(description: str = "") -> argparse.ArgumentParser:
    main = Parser(prog="bookingctl", description=description, formatter_class=argparse.RawTextHelpFormatter)
    main.add_argument("--version", action="version", version=f"bookingctl {_version()}")
    _global_flags(main, suppress=False)
    commands = main.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = commands.add_parser(name, help=text, description=text)
        _global_flags(sub, suppress=True)
        return sub

    token = command("token", "print a token signed with env JWT_SECRET (development)")
    token.add_argument("--sub", required=True)
    token.add_argument("--role", required=True, choices=ROLES)
    token.add_argument("--name", default=None)
    token.add_argument("--ttl", type=int, default=3600, help="seconds (default 3600)")

    health = command("health", "the health of both services (exit 1 unless all SERVING)")
    health.add_argument("--service", default="", help="a health name (default: the whole server)")

    command("get", "bookings by id").add_argument("booking_ids", nargs="+", metavar="BOOKING_ID")
    for name, text in (("list", "bookings you may see"), ("list-deleted", "soft-deleted bookings (admins)")):
        listing = command(name, text)
        listing.add_argument("--customer", default="")
        listing.add_argument("--provider", default="")
        listing.add_argument("--limit", type=int, default=0, help="at most this many (0: all)")
        if name == "list":
            listing.add_argument("--show-deleted", action="store_true")
            listing.add_argument(
                "--from", dest="since", type=_time, metavar="TIME", help="only bookings overlapping --from..--to"
            )
            listing.add_argument("--to", dest="until", type=_time, metavar="TIME", help="(ISO 8601; no zone: UTC)")

    def new_booking(name: str, text: str, customer: str) -> argparse.ArgumentParser:
        made = command(name, text)
        made.add_argument("--provider", required=True)
        made.add_argument("--start", required=True, type=_time, help="ISO 8601 (no zone: UTC)")
        made.add_argument("--end", required=True, type=_time)
        made.add_argument("--customer", default="", help=customer)
        made.add_argument("--service", required=True, help="the service booked (e.g. haircut)")
        made.add_argument("--notes", default="")
        made.add_argument("--request-id", default=None, help=f"makes a repeated {name} return the same booking")
        return made

    new_booking("create", "book a provider's time", "(admins and providers; users book for themselves)")

    hold = new_booking(
        "hold", "hold a provider's time while a customer checks out (then: confirm, or it expires)",
        "(admins; users hold for themselves)",
    )  # fmt: skip
    hold.add_argument("--ttl", type=_duration, default=None, help="how long it holds, 1s to 15m (default 5m)")
    confirm = command("confirm", "confirm a hold: it becomes a booking (same id)")
    confirm.add_argument("booking_id")
    confirm.add_argument("--notes", default="", help="replace the hold's notes")
    confirm.add_argument("--etag", default="", help="only if the hold is still at this etag")

    reschedule = command("reschedule", "move a booking to another time (same id, history kept)")
    reschedule.add_argument("booking_id")
    reschedule.add_argument("--start", required=True, type=_time, help="ISO 8601 (no zone: UTC)")
    reschedule.add_argument("--end", required=True, type=_time)
    reschedule.add_argument("--etag", default="", help="only if the booking is still at this etag")

    free = command("free", "a provider's free time: the gaps of at least --duration between --from and --to")
    free.add_argument("--provider", required=True)
    free.add_argument("--from", dest="since", required=True, type=_time, metavar="TIME", help="ISO 8601 (no zone: UTC)")
    free.add_argument(
        "--to", dest="until", required=True, type=_time, metavar="TIME", help="at most 31 days after --from"
    )
    free.add_argument("--duration", required=True, type=_duration, help="e.g. 30m, 1h30m, 90s")
    free.add_argument("--slots", action="store_true", help="the slot starts instead of the free intervals")
    free.add_argument("--step", type=_duration, default=None, help="between slot starts (default: --duration)")

    delete = command("delete", "soft-delete a booking")
    delete.add_argument("booking_id")
    delete.add_argument("--reason", default="")
    delete.add_argument("--etag", default="", help="only if the booking is still at this etag")
    restore = command("restore", "restore a soft-deleted booking")
    restore.add_argument("booking_id")
    restore.add_argument("--etag", default="")
    hard = command("hard-delete", "permanently remove a soft-deleted booking (admins; asks first)")
    hard.add_argument("booking_id")
    hard.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    command("audit", "a booking's audit trail").add_argument("booking_id")

    purge = command("purge", "hard-delete what was soft-deleted before a time (admins)")
    purge.add_argument("--before", required=True, type=_time, help="ISO 8601 (no zone: UTC)")
    purge.add_argument("--force", action="store_true", help="purge (without: only preview)")
    purge.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    watch = command("watch", "follow changes, one line each, resuming by itself (progress on stderr)")
    watch.add_argument("--resume-after", default=None, help="an event_id: start after it")
    watch.add_argument("--customer", default="")
    watch.add_argument("--provider", default="")
    watch.add_argument("--booking", default="")
    watch.add_argument("--limit", type=int, default=0, help="stop after this many events (0: never)")

    schedule = command("schedule", "a provider's schedule: get PROVIDER, or set FILE (the shape of get's -o yaml)")
    actions = schedule.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("get", help="show a provider's schedule").add_argument("provider")
    setting = actions.add_parser("set", help="replace a provider's schedule from a YAML or JSON file ('-': stdin)")
    setting.add_argument("file")

    _cli_commands.add_config_commands(command("config", "saved contexts (kubeconfig's shape): see --help"))
    completion = command("completion", 'shell completion: eval "$(bookingctl completion bash)"')
    completion.add_argument("shell", choices=("bash", "zsh"))
    return main


def _version() -> str:
    try:
        return metadata.version("slotledger-client")
    except metadata.PackageNotFoundError:
        return "unknown"
