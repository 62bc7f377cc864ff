"""The gRPC server both services run: `ServerConfig` (what it is configured with, from the command line and
the environment) and `GrpcServer` (a grpc.aio server with the shared interceptor, health, reflection, keepalive
and graceful shutdown). The interceptor is svc_common.interceptor, the status mapping svc_common.status, the
health servicer svc_common.health.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from svc_common import tracing
from svc_common.auth import TokenVerifier
from svc_common.errors import ListenError
from svc_common.health import LIVENESS, HealthServicer
from svc_common.interceptor import ServiceInterceptor
from svc_common.settings import Env
from svc_common.tls import TlsConfig, tls_from_env
from svc_common.tracing import TRACING_OFF, TracingConfig

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
    # The event loop the process runs on (EVENT_LOOP): uvloop (libuv's, in C), or Python's own ("asyncio"). Side by
    # side in `make bench` (2026-12-05), uvloop took 5-20% off the median realtime p50 (it varied between sets of
    # runs) and 2-6 us of CPU per delivery: docs/benchmarks.md.
    event_loop: str = "uvloop"

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
            event_loop=env.text("EVENT_LOOP", cls.event_loop, choices=("asyncio", "uvloop")),
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


def loop_name() -> str:
    """The running event loop's implementation: "uvloop" or "asyncio" (for the start-up log line)."""
    return type(asyncio.get_running_loop()).__module__.partition(".")[0]
