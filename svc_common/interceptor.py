"""The server interceptor both services share: authenticates every call except health and reflection, sets
the request id, maps the ServiceError tree to status codes with details (svc_common.status), counts metrics
and logs one line per finished RPC."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.rpc import code_pb2

from svc_common import errors, tracing
from svc_common.auth import TokenVerifier
from svc_common.grpc_metrics import MethodMetrics, StreamSent
from svc_common.logs import REQUEST_ID_HEADER, call_fields, request_id, start_call
from svc_common.principal import current_principal, set_current_principal
from svc_common.status import rich_status, status_code_for

log = logging.getLogger(__name__)
calls_log = logging.getLogger("svc_common.rpc")  # the line of each finished RPC

T = TypeVar("T")

PUBLIC_METHOD_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


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
    """A servicer context whose writes are counted (grpc_server_msg_sent_total, in bulk), for streaming methods."""

    __slots__ = ("_context", "_sent")

    def __init__(self, context: Any, sent: StreamSent) -> None:
        self._context = context
        self._sent = sent

    async def write(self, message: Any) -> None:
        await self._context.write(message)
        self._sent.unreported += 1

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
                    if metrics is None:
                        await writer(request, context)
                    else:
                        sent = StreamSent(metrics.sent)
                        try:
                            await writer(request, _Counting(context, sent))
                        finally:
                            sent.close()
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
