"""The standard health service, bounded: grpcio-health-checking's servicer with `List` and a bound on `Watch`
streams, and the name a liveness probe asks."""

from __future__ import annotations

from typing import Any

from grpc_health.v1 import health, health_pb2

from svc_common import errors

# The health name a liveness probe asks: SERVING from start until shutdown, whatever the database or Redis do
# (readiness is "" and the service names, which follow them).
LIVENESS = "liveness"


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
