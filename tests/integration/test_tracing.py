"""Traces: with tracing on (here with an in-memory exporter, in this process), every RPC has a span, its SQL
statements are spans inside it, Redis commands are spans, the RPC's log line carries its trace id, and the change
event carries the writer's trace context. With tracing off, OpenTelemetry is not even imported."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from booking_api.booking.v1 import booking_pb2_grpc
from booking_api.notify.v1 import notify_pb2, notify_pb2_grpc
from booking_service.server import running as booking_running
from booking_service.settings import Settings as BookingSettings
from notify_service.server import running as notify_running
from notify_service.settings import Settings as NotifySettings
from svc_common import tracing
from svc_common.logs import JsonFormatter
from svc_common.tracing import TracingConfig
from tests.support.events import EventSystem, eventually
from tests.support.helpers import Caller, auth, uid
from tests.support.servers import PROJECT, booking_env, notify_env

pytestmark = pytest.mark.timeout(120)


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def traced() -> Iterator[tuple[InMemorySpanExporter, Records]]:
    """Tracing on in this process, exporting to memory; a log handler that sees what the filter adds."""
    records = Records()
    root, rpc_log = logging.getLogger(), logging.getLogger("svc_common.rpc")
    root.addHandler(records)
    level = rpc_log.level
    rpc_log.setLevel(logging.INFO)
    exporter = InMemorySpanExporter()
    tracing.configure(TracingConfig(service_name="tests"), exporter=exporter)
    try:
        yield exporter, records
    finally:
        tracing.shutdown()
        rpc_log.setLevel(level)
        root.removeHandler(records)


def trace_id(span: ReadableSpan) -> str:
    assert span.context is not None
    return f"{span.context.trace_id:032x}"


async def test_an_rpc_its_sql_its_log_line_and_its_change_event_share_one_trace(
    traced: tuple[InMemorySpanExporter, Records], new_database: Callable[[], str], redis_url: str
) -> None:
    exporter, records = traced
    database = new_database()
    booking_settings = BookingSettings.from_env(booking_env(database, redis_url), listen="127.0.0.1:0")
    notify_settings = NotifySettings.from_env(
        {**notify_env(database, redis_url), "DATABASE_URL": ""}, listen="127.0.0.1:0"
    )
    async with booking_running(booking_settings) as booking, notify_running(notify_settings) as notify:
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{booking.port}") as booking_channel,
            grpc.aio.insecure_channel(f"127.0.0.1:{notify.port}") as notify_channel,
        ):
            subscribe = notify_pb2_grpc.NotifyServiceStub(notify_channel).Subscribe(
                notify_pb2.SubscribeRequest(), metadata=auth("admin", "ops")
            )
            await asyncio.wait_for(subscribe.initial_metadata(), 30)
            alice = Caller(booking_pb2_grpc.BookingServiceStub(booking_channel), "user", uid("alice"))
            made = await alice.create(provider_id=uid("prov"))
            response = await asyncio.wait_for(subscribe.read(), 30)
            subscribe.cancel()
    (event,) = response.events  # type: ignore[attr-defined]
    assert event.booking.id == made.id

    spans = exporter.get_finished_spans()
    (create,) = [s for s in spans if s.name == "/booking.v1.BookingService/CreateBooking"]
    assert create.kind == SpanKind.SERVER
    trace = trace_id(create)
    sql = [s for s in spans if (s.attributes or {}).get("db.system") == "postgresql" and trace_id(s) == trace]
    assert sql, "no SQL span inside the CreateBooking span"
    assert all(s.parent is not None for s in sql)
    assert any((s.attributes or {}).get("db.system") == "redis" for s in spans), "no Redis span"

    # The change event names the write's trace: a subscriber can link its handling to it.
    version, event_trace, _span, _flags = event.traceparent.split("-")
    assert (version, event_trace) == ("00", trace)

    (line,) = [r for r in records.records if getattr(r, "rpc", {}).get("method", "").endswith("/CreateBooking")]
    assert json.loads(JsonFormatter().format(line))["trace_id"] == trace


def test_with_tracing_off_nothing_is_instrumented_and_no_trace_context_is_made() -> None:
    """(redis-py imports OpenTelemetry's API itself when it is installed; this project's tracing imports none of
    the SDK's trace machinery or the instrumentations when off.)"""
    code = (
        "import sys, booking_service.server, notify_service.server, booking_service.storage\n"
        "from svc_common import tracing\n"
        "from booking_service.settings import Settings\n"
        "env = {'DATABASE_URL': 'postgresql://h/d', 'REDIS_URL': 'redis://h', 'JWT_SECRET': 's' * 32}\n"
        "s = Settings.from_env(env)\n"
        "tracing.configure(s.server.tracing)\n"
        "assert tracing.traceparent() is None and tracing.server_interceptors() == []\n"
        "traced = ('opentelemetry.instrumentation', 'opentelemetry.sdk.trace')\n"
        "print(sorted(m for m in sys.modules if m.startswith(traced)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver: what a service exports, as (service.name, span name, trace id)."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, str, str]] = []

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource_spans in request.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                self.spans.extend((attributes["service.name"], s.name, s.trace_id.hex()) for s in scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


async def test_a_service_with_an_otlp_endpoint_exports_its_spans_there_and_logs_their_trace_ids(
    system: EventSystem,
) -> None:
    """The production path: a service process, OTEL_EXPORTER_OTLP_ENDPOINT, spans sent over OTLP/gRPC."""
    collector = Collector()
    receiver = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, receiver)  # type: ignore[no-untyped-call]
    port = receiver.add_insecure_port("127.0.0.1:0")
    await receiver.start()
    try:
        booking = system.booking(
            OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
            OTEL_BSP_SCHEDULE_DELAY="100",  # the SDK's own setting: export every 100 ms rather than 5 s
            LOG_FORMAT="json",
        )
        async with grpc.aio.insecure_channel(booking.address) as channel:
            alice = Caller(booking_pb2_grpc.BookingServiceStub(channel), "user", uid("alice"))
            await alice.create(provider_id=uid("prov"))

        def created() -> list[tuple[str, str, str]]:
            return [s for s in collector.spans if s[1] == "/booking.v1.BookingService/CreateBooking"]

        await eventually(lambda: bool(created()), lambda: f"no CreateBooking span among {collector.spans[:20]}")
        ((service, _, trace),) = created()
        assert service == "booking_service"
        await eventually(lambda: "/CreateBooking" in booking.log(), booking.log_tail, within=10)  # written in batches
        lines = [json.loads(line) for line in booking.log().splitlines() if line.startswith("{")]
        (line,) = [x for x in lines if x.get("method", "").endswith("/CreateBooking")]
        assert line["trace_id"] == trace
    finally:
        await receiver.stop(None)
