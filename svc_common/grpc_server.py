"""gRPC server scaffolding shared by both services.

- `ServiceInterceptor`: authenticates every call except health and reflection, and maps the `ServiceError`
  tree to status codes with google.rpc ErrorInfo/BadRequest details (the one place this happens).
- `GrpcServer`: a grpc.aio server with health, reflection, keepalive and graceful shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status

from svc_common import errors, tracing
from svc_common.auth import TokenVerifier, current_principal, set_current_principal
from svc_common.grpc_metrics import MethodMetrics
from svc_common.logs import REQUEST_ID_HEADER, call_fields, request_id, start_call
from svc_common.settings import Env
from svc_common.tls import TlsConfig, tls_from_env
from svc_common.tracing import TRACING_OFF, TracingConfig

log = logging.getLogger(__name__)
calls_log = logging.getLogger("svc_common.rpc")  # the line of each finished RPC

T = TypeVar("T")

# The health name a liveness probe asks: SERVING from start until shutdown, whatever the database or Redis do
# (readiness is "" and the service names, which follow them).
LIVENESS = "liveness"
PUBLIC_METHOD_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

# Each error class maps to exactly one status code (subclasses inherit their parent's).
STATUS_CODES: dict[type[errors.ServiceError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Aborted: grpc.StatusCode.ABORTED,
    errors.OutOfRange: grpc.StatusCode.OUT_OF_RANGE,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
}

# Server keepalive: ping idle connections every 30 s and drop them if a ping is not answered within 10 s.
# Clients may ping at most every 10 s (also without calls in flight).
KEEPALIVE_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    # grpc core also waits this long for any ping's ack (default 60 s, which held vanished clients for 90 s).
    ("grpc.http2.ping_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
)
MAX_RECEIVE_MESSAGE_BYTES = 1 << 20


def status_code_for(exc: errors.ServiceError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        code = STATUS_CODES.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def rich_status(
    code: grpc.StatusCode,
    message: str,
    *,
    reason: str,
    domain: str,
    metadata: dict[str, str] | None = None,
    violations: Sequence[errors.FieldViolation] = (),
) -> grpc.Status:
    """A status with exactly one ErrorInfo and, for field violations, a BadRequest."""
    details = [_pack(error_details_pb2.ErrorInfo(reason=reason, domain=domain, metadata=metadata or {}))]
    if violations:
        details.append(
            _pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                        for v in violations
                    ]
                )
            )
        )
    proto = status_pb2.Status(code=code.value[0], message=message, details=details)
    status: grpc.Status = rpc_status.to_status(proto)
    return status


class _Undecodable:
    """Stands in for a request whose bytes did not parse, so the call ends INVALID_ARGUMENT, not UNKNOWN."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # noqa: BLE001 - reported to the caller as INVALID_ARGUMENT
            return _Undecodable(exc)

    return decode


class _Counting:
    """A servicer context whose writes are counted (grpc_server_msg_sent_total), for streaming methods."""

    __slots__ = ("_context", "_sent")

    def __init__(self, context: Any, sent: Any) -> None:
        self._context = context
        self._sent = sent

    async def write(self, message: Any) -> None:
        await self._context.write(message)
        self._sent.inc()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


def _final_code(context: Any) -> grpc.StatusCode:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    return grpc.StatusCode.OK if code in (None, 0) else grpc.StatusCode.UNKNOWN


SERVER_FAULTS = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS})
OUTAGES = frozenset({grpc.StatusCode.UNAVAILABLE})


def _log_call(fields: dict[str, Any], code: grpc.StatusCode, seconds: float, *, public: bool) -> None:
    """The one line of a finished RPC: expected client errors at INFO, outages at WARNING, faults at ERROR
    (their traceback was logged where they were caught); health and reflection at DEBUG."""
    line = {"method": fields.pop("method"), "code": code.name, "reason": fields.pop("reason", "")}
    line["duration_ms"] = round(seconds * 1000, 2)
    try:
        principal = current_principal()
    except LookupError:
        pass
    else:
        line["caller"], line["role"] = principal.id, principal.role.value
    line |= fields  # request_id, peer, and what the handler added
    if public:
        level = logging.DEBUG
    else:
        level = logging.ERROR if code in SERVER_FAULTS else logging.WARNING if code in OUTAGES else logging.INFO
    calls_log.log(level, "rpc", extra={"rpc": line})


class ServiceInterceptor(grpc.aio.ServerInterceptor):
    """Authentication (all but health and reflection), error mapping, the request id, one log line per RPC
    (svc_common.logs) and, when `metrics`, the gRPC server metrics (svc_common.grpc_metrics); each method's
    wrapper is built once."""

    def __init__(self, verifier: TokenVerifier, domain: str, *, metrics: bool = False) -> None:
        self._verifier = verifier
        self._domain = domain
        self._metrics = metrics
        self._wrapped: dict[str, Any] = {}
        if code_pb2.INTERNAL != grpc.StatusCode.INTERNAL.value[0]:  # pragma: no cover - sanity of the mapping
            raise RuntimeError("google.rpc codes and grpc.StatusCode disagree")

    async def intercept_service(
        self,
        continuation: Callable[[Any], Awaitable[Any]],
        handler_call_details: Any,
    ) -> Any:
        method: str = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            handler = await continuation(handler_call_details)
            if handler is None:
                return None
            wrapped = self._wrap(handler, method, authenticate=not method.startswith(PUBLIC_METHOD_PREFIXES))
            self._wrapped[method] = wrapped
        return wrapped

    def _prepare(self, request: Any, context: Any, authenticate: bool) -> None:
        if authenticate:
            header = None
            for key, value in context.invocation_metadata() or ():
                if key == "authorization":
                    header = value if isinstance(value, str) else None
                    break
            set_current_principal(self._verifier.verify_header(header))
        if isinstance(request, _Undecodable):
            raise errors.InvalidArgument(
                [], message="the request is not a valid message of this method", reason="MALFORMED_REQUEST"
            )

    async def _abort(self, context: Any, exc: Exception) -> None:
        call_fields()["reason"] = exc.reason if isinstance(exc, errors.ServiceError) else "INTERNAL"
        if isinstance(exc, errors.ServiceError):
            status = rich_status(
                status_code_for(exc),
                exc.message,
                reason=exc.reason,
                domain=self._domain,
                metadata=exc.metadata,
                violations=getattr(exc, "violations", ()),
            )
        else:
            log.exception("unexpected error serving an RPC", exc_info=exc)
            status = rich_status(grpc.StatusCode.INTERNAL, "internal error", reason="INTERNAL", domain=self._domain)
        await context.abort(status.code, status.details, status.trailing_metadata)

    async def _observed(
        self,
        method: str,
        metrics: MethodMetrics | None,
        context: Any,
        call: Callable[[str], Awaitable[T]],
        *,
        public: bool,
    ) -> T:
        """Run one RPC's handling (`call(request_id)`), then count it and log its line."""
        started = time.perf_counter()
        sent = None
        for key, value in context.invocation_metadata() or ():
            if key == REQUEST_ID_HEADER:
                sent = value
                break
        fields = start_call({"method": method, "request_id": request_id(sent), "peer": context.peer()})
        if metrics is not None:
            metrics.started.inc()
            metrics.received.inc()
        code = grpc.StatusCode.CANCELLED  # unless it ends otherwise: cancelled by its client or by shutdown
        try:
            result = await call(fields["request_id"])
            code = _final_code(context)
            return result
        except grpc.aio.AbortError:
            code = _final_code(context)
            raise
        finally:
            seconds = time.perf_counter() - started
            if metrics is not None:
                metrics.handled(code, seconds)
            _log_call(fields, code, seconds, public=public)

    def _wrap(self, handler: Any, method: str, *, authenticate: bool) -> Any:
        decode = _tolerant(handler.request_deserializer)
        if handler.unary_unary is not None:
            unary = handler.unary_unary
            metrics = MethodMetrics(method, "unary") if self._metrics else None

            async def unary_behavior(request: Any, context: Any, rid: str) -> Any:
                try:
                    await context.send_initial_metadata(((REQUEST_ID_HEADER, rid),))
                    self._prepare(request, context, authenticate)
                    response = await unary(request, context)
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:  # noqa: BLE001 - mapped to a status, unexpected ones logged
                    await self._abort(context, exc)
                if metrics is not None:
                    metrics.sent.inc()
                return response

            async def observed_unary(request: Any, context: Any) -> Any:
                return await self._observed(
                    method, metrics, context, lambda rid: unary_behavior(request, context, rid), public=not authenticate
                )

            return grpc.unary_unary_rpc_method_handler(
                observed_unary, request_deserializer=decode, response_serializer=handler.response_serializer
            )
        if handler.unary_stream is not None:  # served by a coroutine that sends with context.write()
            writer = handler.unary_stream
            metrics = MethodMetrics(method, "server_stream") if self._metrics else None

            async def write_behavior(request: Any, context: Any) -> None:
                try:
                    self._prepare(request, context, authenticate)
                    # The handler sends the initial metadata (with current_request_id()) when it is ready.
                    await writer(request, context if metrics is None else _Counting(context, metrics.sent))
                except grpc.aio.AbortError:
                    raise
                except grpc.aio.InternalError:
                    # A send failed: the client went away while it was pending (grpc's ExecuteBatchError, raised
                    # before grpc has noticed the close itself). Nothing is wrong and nothing more can be sent:
                    # the call ends as cancelled, not as a fault.
                    context.set_code(grpc.StatusCode.CANCELLED)
                except Exception as exc:  # noqa: BLE001 - mapped to a status, unexpected ones logged
                    await self._abort(context, exc)

            async def observed_stream(request: Any, context: Any) -> None:
                await self._observed(
                    method, metrics, context, lambda _: write_behavior(request, context), public=not authenticate
                )

            if tracing.enabled():
                # The tracing interceptor iterates a stream's responses, so it gets an async generator that yields
                # none: the responses still go out through context.write(), one serialisation each.
                traced_stream = observed_stream

                async def observed_stream(request: Any, context: Any) -> Any:  # type: ignore[misc]
                    await traced_stream(request, context)
                    return
                    yield

            return grpc.unary_stream_rpc_method_handler(
                observed_stream, request_deserializer=decode, response_serializer=handler.response_serializer
            )
        if not authenticate:  # reflection's bidirectional stream: served as the library made it
            return handler
        raise TypeError("only unary-unary and unary-stream (context.write) RPCs are served")


class ListenError(Exception):
    """The server cannot listen on its address (in use, or not an address of this host)."""


class HealthServicer(health.aio.HealthServicer):  # type: ignore[misc]
    """grpcio-health-checking's servicer plus `List`, which its aio servicer leaves unimplemented (reflection
    advertises it, and it answered INTERNAL), and a bound on open `Watch` streams: health needs no token, so
    without one anyone could hold streams, and the memory they cost, without limit."""

    def __init__(self, max_watches: int = 1000) -> None:
        super().__init__()
        self._names: set[str] = {""}
        self._max_watches = max_watches  # 0: no bound
        self.watches = 0

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> None:
        if self._max_watches and self.watches >= self._max_watches:
            raise errors.ResourceExhausted(
                f"this instance holds {self._max_watches} health watches already, its bound; use Check or retry later",
                reason="TOO_MANY_STREAMS",
                metadata={"bound": str(self._max_watches), "scope": "health"},
            )
        self.watches += 1
        try:
            await super().Watch(request, context)
        finally:
            self.watches -= 1

    async def set(self, service: str, status: int) -> None:
        self._names.add(service)
        await super().set(service, status)

    async def List(self, request: health_pb2.HealthListRequest, context: Any) -> health_pb2.HealthListResponse:
        statuses = {}
        for name in sorted(self._names):
            statuses[name] = await self.Check(health_pb2.HealthCheckRequest(service=name), context)
        return health_pb2.HealthListResponse(statuses=statuses)


@dataclass(frozen=True)
class ServerConfig:
    """What both services' gRPC servers are configured with (read by `read`, from the command line and env)."""

    listen: str
    reuse_port: bool = False  # one of several workers on one address (SO_REUSEPORT; set by --workers)
    metrics_listen: tuple[str, int] | None = None  # where svc_common.metrics serves them (METRICS_LISTEN)
    tls: TlsConfig | None = None  # None: plaintext (svc_common.tls)
    # A connection is closed (GOAWAY) after about this long, so clients spread over instances added since they
    # connected; calls still open get the grace, then end with UNAVAILABLE (subscribers resume elsewhere).
    max_connection_age_seconds: float = 600.0  # 0: connections are never aged out
    max_connection_age_grace_seconds: float = 30.0
    tracing: TracingConfig = TRACING_OFF  # on when OTEL_EXPORTER_OTLP_ENDPOINT is set
    # HTTP/2 streams (calls) one client connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS); a
    # client past it waits for one to end (grpc queues the call) rather than failing. Above the admin's stream
    # bound: a gateway may carry all its subscriptions on one connection (grpc's channels to one address share one).
    max_concurrent_streams: int = 10_000
    max_health_watches: int = 1000  # open Health/Watch streams per process (0: no bound)

    @property
    def metrics(self) -> bool:
        """Whether to record metrics: they are served somewhere."""
        return self.metrics_listen is not None

    @classmethod
    def read(cls, env: Env, *, listen: str, reuse_port: bool, metrics_default: str, service_name: str) -> ServerConfig:
        return cls(
            listen=listen,
            tracing=TracingConfig.read(env, service_name),
            reuse_port=reuse_port,
            metrics_listen=env.address("METRICS_LISTEN", metrics_default),
            tls=tls_from_env(env),
            max_connection_age_seconds=env.number(
                "MAX_CONNECTION_AGE_SECONDS", cls.max_connection_age_seconds, least=0, most=7 * 86400
            ),
            max_connection_age_grace_seconds=env.number(
                "MAX_CONNECTION_AGE_GRACE_SECONDS", cls.max_connection_age_grace_seconds, least=0, most=86400
            ),
            max_concurrent_streams=env.integer(
                "MAX_CONCURRENT_STREAMS", cls.max_concurrent_streams, least=1, most=2**31 - 1
            ),
            max_health_watches=env.integer("HEALTH_MAX_WATCHES", cls.max_health_watches, least=0, most=10_000_000),
        )

    def options(self) -> list[tuple[str, int]]:
        options = [
            *KEEPALIVE_OPTIONS,
            ("grpc.max_receive_message_length", MAX_RECEIVE_MESSAGE_BYTES),
            # grpcio sets SO_REUSEPORT by default, so a second server on a port in use would silently share it:
            # only workers of one supervisor share their address (svc_common.workers).
            ("grpc.so_reuseport", int(self.reuse_port)),
            ("grpc.max_concurrent_streams", self.max_concurrent_streams),
        ]
        if self.max_connection_age_seconds > 0:
            options += [
                ("grpc.max_connection_age_ms", int(self.max_connection_age_seconds * 1000)),
                ("grpc.max_connection_age_grace_ms", int(self.max_connection_age_grace_seconds * 1000)),
            ]
        return options


class GrpcServer:
    """A grpc.aio server with auth, error mapping, health, reflection and graceful shutdown."""

    def __init__(
        self, config: ServerConfig, *, verifier: TokenVerifier, error_domain: str, service_names: Sequence[str]
    ) -> None:
        self.health = HealthServicer(config.max_health_watches)
        self.port = 0  # the port listened on, once started
        self._listen = config.listen
        self._tls = config.tls
        self._service_names = tuple(service_names)
        options = config.options()
        interceptor = ServiceInterceptor(verifier, error_domain, metrics=config.metrics)
        # Tracing's interceptor (when on) is outermost: the call's span holds everything, our log line included.
        self.server = grpc.aio.server(interceptors=[*tracing.server_interceptors(), interceptor], options=options)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (*self._service_names, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )

    async def start(self) -> int:
        """Listen and serve; returns the port."""
        try:
            if self._tls is None:
                port: int = self.server.add_insecure_port(self._listen)
            else:
                port = self.server.add_secure_port(self._listen, self._tls.server_credentials())
        except RuntimeError as exc:  # grpcio: "Failed to bind to address ..."
            raise ListenError(f"cannot listen on {self._listen}: in use, or not an address of this host") from exc
        if port == 0:
            raise ListenError(f"cannot listen on {self._listen}")
        await self.health.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
        await self.server.start()
        self.port = port
        return port

    async def set_serving(self, serving: bool, *, names: Sequence[str] | None = None) -> None:
        """Set the health of `names` (default: the overall status "" and every service served)."""
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *self._service_names) if names is None else names:
            await self.health.set(name, status)

    async def stop(self, grace_seconds: float) -> None:
        """Report NOT_SERVING, refuse new calls and give calls in flight `grace_seconds` to finish."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_seconds)


async def cancel_and_wait(task: asyncio.Task[None], *, repeat_seconds: float = 0.5) -> None:
    """Cancel a background task and wait until it has finished. The cancellation is repeated while the task runs
    on: a library that swallows one (seen: redis-py's pipeline when cancelled mid-write) must not keep a task,
    and so the shutdown, alive."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=repeat_seconds)
    with contextlib.suppress(asyncio.CancelledError):
        await task


def stop_event_on_signals() -> asyncio.Event:
    """An event set on SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop
