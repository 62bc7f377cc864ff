"""The README's grpcurl calls, run in order against a real server.

grpcurl is not packaged for our machines, so each call is made the way grpcurl makes it: the request type
comes from the server's reflection service and the -d JSON is mapped onto it with protobuf's JSON mapping.
A comment `# -> CODE` above a call says it must fail with that code; every other call must succeed.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from booking.v1 import booking_pb2
from tests.conftest import booking_env
from tests.helpers import token
from tests.servers import ServiceProcess

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands() -> Iterator[tuple[str, str | None]]:
    """Each shell command of the README's sh blocks, with the code a `# -> CODE` comment expects."""
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(), flags=re.S)
    for block in blocks:
        expected, pending = None, ""
        for line in block.splitlines():
            if not pending and line.startswith("# -> "):
                expected = line[5:].split(":")[0].strip()
                continue
            if not pending and (not line.strip() or line.startswith("#")):
                continue
            pending += line[:-1] if line.endswith("\\") else line + "\n"
            if line.endswith("\\"):
                continue
            try:
                shlex.split(pending)
            except ValueError:  # an open quote: the command goes on
                continue
            yield pending.strip(), expected
            expected, pending = None, ""


def test_readme_has_a_grpcurl_call_for_every_booking_rpc() -> None:
    called = {m.group(1) for cmd, _ in readme_commands() for m in [re.search(r"BookingService/(\w+)", cmd)] if m}
    assert called == set(booking_pb2.DESCRIPTOR.services_by_name["BookingService"].methods_by_name)


class Grpcurl:
    """The subset of grpcurl the README uses: list, describe, and unary calls with -H and -d."""

    def __init__(self, address: str, env: dict[str, str]) -> None:
        self.channel = grpc.insecure_channel(address)
        self.pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(self.channel))
        self.env = env

    def run(self, command: str) -> Any:
        words = shlex.split(re.sub(r"\$(\w+)", lambda m: self.env[m.group(1)], command))
        assert words[0] == "grpcurl" and "-plaintext" in words, command
        headers, data, rest = [], "{}", []
        i = 1
        while i < len(words):
            if words[i] == "-H":
                headers.append(tuple(part.strip() for part in words[i + 1].split(":", 1)))
                i += 2
            elif words[i] == "-d":
                data = words[i + 1]
                i += 2
            elif words[i] == "-plaintext":
                i += 1
            else:
                rest.append(words[i])
                i += 1
        target, *what = rest[1:]
        if target == "list":
            return set(ProtoReflectionDescriptorDatabase(self.channel).get_services())
        if target == "describe":
            return self.pool.FindServiceByName(what[0])
        service_name, method_name = target.rsplit("/", 1)
        method = self.pool.FindServiceByName(service_name).methods_by_name[method_name]
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        request = json_format.Parse(data, request_class())
        call: Callable[..., Any] = self.channel.unary_unary(
            f"/{service_name}/{method_name}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_class.FromString,
        )
        response = call(request, metadata=headers, timeout=30)
        return json.loads(json_format.MessageToJson(response, preserving_proto_field_name=True))


def test_readme_grpcurl_calls_work_as_printed(new_database: Callable[[], str], redis_url: str, workdir: Path) -> None:
    server = ServiceProcess("booking_service", booking_env(new_database(), redis_url), workdir)
    server.start()
    grpcurl = Grpcurl(server.address, {})
    ran = 0
    try:
        for command, expected in readme_commands():
            exported = re.fullmatch(r"export (\w+)=\$\(make -s token SUB=(\w+) ROLE=(\w+)\)", command)
            if exported:
                name, sub, role = exported.groups()
                grpcurl.env[name] = token(role, sub)
                continue
            if command.startswith(("make ", "export BOOKING_ID")):
                continue
            command = command.replace("localhost:50051", server.address)
            try:
                result = grpcurl.run(command)
            except grpc.RpcError as error:
                assert expected == error.code().name, f"{command}\n-> {error.code().name}: {error.details()}"
            else:
                assert expected is None, f"{command}\n-> succeeded, expected {expected}"
                if "CreateBooking" in command:
                    grpcurl.env["BOOKING_ID"] = result["booking"]["id"]
                if command.endswith(" list"):
                    assert "booking.v1.BookingService" in result
            ran += 1
    finally:
        grpcurl.channel.close()
        server.stop()
    assert ran == sum(command.startswith("grpcurl") for command, _ in readme_commands()) == 16
