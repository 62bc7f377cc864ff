"""bookingctl's commands that call no service: `config` (saved contexts, booking_client._cli_config) and
`completion` (bash and zsh, generated from the parser by shtab); and `--verbose`'s line per call."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

import grpc
import shtab
import yaml

from booking_client._cli_config import KEYS, TOKEN_KEYS, Config, ConfigError
from booking_client._client import REQUEST_ID_HEADER

CONFIG_HELP = """saved contexts, in kubeconfig's shape (file: $BOOKINGCTL_CONFIG, else ~/.config/bookingctl/config.yaml)

  bookingctl config set-context staging --target booking.example.com:443 --tls --token-command "vault read ..."
  bookingctl config use-context staging
  bookingctl config get-contexts
  bookingctl --context local list     (one call in another context)

A setting comes from its flag, then --context's, then env (BOOKING_TARGET, BOOKING_NOTIFY_TARGET, BOOKING_TOKEN),
then the current context's, then the default."""


def add_config_commands(config: argparse.ArgumentParser) -> None:
    config.description = CONFIG_HELP
    config.formatter_class = argparse.RawDescriptionHelpFormatter
    actions = config.add_subparsers(dest="action", required=True, metavar="ACTION")
    setting = actions.add_parser("set-context", help="create a context, or change the settings given")
    setting.add_argument("name")
    setting.add_argument("--target", help="the booking service, HOST:PORT")
    setting.add_argument("--notify-target", help="the notify service (default: the target)")
    setting.add_argument("--tls", dest="tls", action="store_const", const=True, help="speak TLS")
    setting.add_argument("--no-tls", dest="tls", action="store_const", const=False, help="plaintext")
    setting.add_argument("--cacert", help="PEM CA to trust")
    setting.add_argument("--cert", help="PEM client certificate (mutual TLS)")
    setting.add_argument("--key", help="PEM key of --cert")
    setting.add_argument("--server-name", help="the name the server's certificate must have")
    setting.add_argument("--timeout", type=float, help="seconds per call")
    tokens = setting.add_mutually_exclusive_group()
    tokens.add_argument("--token-file", help="a file holding the token")
    tokens.add_argument("--token-command", help="a command printing the token (run for each call that needs it)")
    tokens.add_argument("--token-env", help="an environment variable holding the token")
    actions.add_parser("use-context", help="make a context the current one").add_argument("name")
    actions.add_parser("delete-context", help="remove a context").add_argument("name")
    actions.add_parser("get-contexts", help="the contexts, the current one marked")
    actions.add_parser("current-context", help="the current context's name")
    actions.add_parser("view", help="the file")


def local_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.command == "completion":
        sys.stdout.write(shtab.complete(parser, shell=args.shell))
        return 0
    config = Config.load()
    action = args.action
    if action == "set-context":
        settings: dict[str, Any] = {}
        for key in (*KEYS, *TOKEN_KEYS):
            value = getattr(args, key.replace("-", "_"), None)
            if value is not None:
                settings[key] = value
        config.set_context(args.name, settings)
        if not config.current:
            config.data["current-context"] = args.name
        config.save()
        print(f"context {args.name!r} saved in {config.path}")
    elif action == "use-context":
        config.context(args.name)
        config.data["current-context"] = args.name
        config.save()
        print(f"current context: {args.name}")
    elif action == "delete-context":
        config.delete_context(args.name)
        config.save()
        print(f"context {args.name!r} deleted")
    elif action == "get-contexts":
        for name in config.names:
            settings = config.context(name)
            mark = "*" if name == config.current else " "
            print(f"{mark} {name:<20} {settings.get('target', '')}")
    elif action == "current-context":
        if not config.current:
            raise ConfigError(f"no current context in {config.path}")
        print(config.current)
    elif action == "view":
        sys.stdout.write(yaml.safe_dump(config.data, sort_keys=False))
    return 0


def verbose() -> list[grpc.aio.ClientInterceptor]:
    """--verbose: a line on stderr as each call starts (method, request id) and as a unary call ends (status,
    milliseconds)."""
    return [VerboseUnary(), VerboseStream()]


def _note(details: grpc.aio.ClientCallDetails) -> tuple[str, float]:
    method = details.method.decode() if isinstance(details.method, bytes) else str(details.method)
    request_id = dict(details.metadata or ()).get(REQUEST_ID_HEADER, "")
    request_id = request_id.decode() if isinstance(request_id, bytes) else request_id
    print(f"> {method.lstrip('/')}  request id {request_id}", file=sys.stderr, flush=True)
    return method.lstrip("/"), time.monotonic()


def _done(method: str, started: float, code: grpc.StatusCode) -> None:
    took = (time.monotonic() - started) * 1000
    print(f"< {method}  {code.name} in {took:.1f} ms", file=sys.stderr, flush=True)


class VerboseUnary(grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        method, started = _note(client_call_details)
        call = await continuation(client_call_details, request)
        _done(method, started, await call.code())
        return call


class VerboseStream(grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        _note(client_call_details)
        return await continuation(client_call_details, request)
