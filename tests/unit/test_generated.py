"""The generated code: every module imports, under the project's package name, and the version floors in
pyproject.toml are exactly what the generated code requires."""

from __future__ import annotations

import importlib
import re
import tomllib
from pathlib import Path

import booking_api

PROJECT = Path(__file__).resolve().parents[2]
GENERATED = Path(booking_api.__file__).parent


def _modules() -> list[str]:
    return sorted(
        ".".join(path.relative_to(GENERATED.parent).with_suffix("").parts) for path in GENERATED.rglob("*_pb2*.py")
    )


def _floor(requirement: str) -> str:
    dependencies = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]["dependencies"]
    [spec] = [d for d in dependencies if re.split(r"[<>=!~ ]", d)[0] == requirement]
    match = re.search(r">=([0-9.]+)", spec)
    assert match, spec
    return match[1]


def test_every_generated_module_imports_under_the_project_package() -> None:
    modules = _modules()
    assert {m.rsplit(".", 1)[0] for m in modules} == {"booking_api.booking.v1", "booking_api.notify.v1"}
    for name in modules:
        importlib.import_module(name)


def test_version_floors_are_what_the_generated_code_requires() -> None:
    grpc_code = (GENERATED / "booking" / "v1" / "booking_pb2_grpc.py").read_text()
    generated_grpc = re.search(r"GRPC_GENERATED_VERSION = '([0-9.]+)'", grpc_code)
    proto_code = (GENERATED / "booking" / "v1" / "booking_pb2.py").read_text()
    generated_proto = re.search(r"Domain\.PUBLIC,\s*(\d+),\s*(\d+),\s*(\d+),", proto_code)
    assert generated_grpc and generated_proto
    assert _floor("grpcio") == generated_grpc[1]
    for companion in ("grpcio-health-checking", "grpcio-reflection", "grpcio-status"):
        assert _floor(companion) == generated_grpc[1], companion
    assert _floor("protobuf") == ".".join(generated_proto.groups())
