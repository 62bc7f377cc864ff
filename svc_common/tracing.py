"""OpenTelemetry traces, on when OTEL_EXPORTER_OTLP_ENDPOINT is set (off by default).

When on: a span for every RPC (the maintained grpc aio server interceptor, outermost, so everything a call
does is inside it), for every SQL statement (asyncpg's instrumentation) and every Redis command (redis'), sent
in batches over OTLP/gRPC to the endpoint; the trace id in every log line (`trace_id`); and the trace context
of the write that made a change (W3C `traceparent`) stored with its outbox row and carried in the change event
(BookingEvent.traceparent), so a subscriber's handling of an event can be linked to the write.

When off, nothing of OpenTelemetry is imported or installed: `traceparent()` is a flag check, and the server has
no extra interceptor.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from svc_common.settings import Env

_state: dict[str, Any] = {}  # while on: "propagator", "provider", "instrumentors"


@dataclass(frozen=True)
class TracingConfig:
    endpoint: str = ""  # OTLP/gRPC endpoint; "" turns tracing off
    service_name: str = ""

    @classmethod
    def read(cls, env: Env, service_name: str) -> TracingConfig:
        endpoint = env.url("OTEL_EXPORTER_OTLP_ENDPOINT", ("http", "https"))
        return cls(endpoint, env.text("OTEL_SERVICE_NAME", service_name))


TRACING_OFF = TracingConfig()


def enabled() -> bool:
    return bool(_state)


def configure(config: TracingConfig, *, exporter: Any = None) -> None:
    """Turn tracing on for this process if `config.endpoint` is set or an `exporter` is given (tests pass an
    in-memory one); spans of the exporter given are exported as they end, the OTLP exporter's in batches."""
    if not config.endpoint and exporter is None:
        return
    from opentelemetry import trace
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    provider = TracerProvider(resource=Resource.create({"service.name": config.service_name}))
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=config.endpoint)))
    else:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentors: list[Any] = [AsyncPGInstrumentor(), RedisInstrumentor()]  # type: ignore[no-untyped-call]
    for instrumentor in instrumentors:
        instrumentor.instrument(tracer_provider=provider)
    _state.update(provider=provider, instrumentors=instrumentors, propagator=TraceContextTextMapPropagator())
    _state["log_filter"] = _TraceIds(trace)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_state["log_filter"])


def shutdown() -> None:
    """Export what is pending and turn tracing off again (at exit; tests that turned it on)."""
    if not _state:
        return
    for instrumentor in _state["instrumentors"]:
        instrumentor.uninstrument()
    for handler in logging.getLogger().handlers:
        handler.removeFilter(_state["log_filter"])
    _state["provider"].shutdown()
    _state.clear()


def server_interceptors() -> list[Any]:
    """The grpc aio server interceptor that makes a span of every RPC, when tracing is on."""
    if not _state:
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return [aio_server_interceptor(tracer_provider=_state["provider"])]  # type: ignore[no-untyped-call]


def traceparent() -> str | None:
    """The W3C traceparent of the current span, or None (tracing off, or no span)."""
    if not _state:
        return None
    carrier: dict[str, str] = {}
    _state["propagator"].inject(carrier)
    return carrier.get("traceparent")


class _TraceIds(logging.Filter):
    """Adds `trace_id` (and `span_id`) of the current span to a record, in the thread that logs it (the
    formatting thread of svc_common.logs could not see the span)."""

    def __init__(self, trace: Any) -> None:
        super().__init__()
        self._trace = trace

    def filter(self, record: logging.LogRecord) -> bool:
        context = self._trace.get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = f"{context.trace_id:032x}"
            record.span_id = f"{context.span_id:016x}"
        return True
