"""Exit 0 if a gRPC server reports SERVING: `python -m svc_common.healthcheck HOST:PORT [SERVICE]`.

For container health checks and scripts; grpcurl users can call grpc.health.v1.Health/Check instead. Run with
the service's environment, it speaks TLS when the service does (svc_common.tls).
"""

from __future__ import annotations

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from svc_common.settings import Env, SettingsError
from svc_common.tls import client_channel_options, client_credentials


def serving_status(
    address: str,
    service: str = "",
    timeout: float = 3.0,
    credentials: grpc.ChannelCredentials | None = None,
    options: list[tuple[str, str]] | None = None,
) -> int:
    """The health status a server reports for `service`; raises grpc.RpcError when it does not answer."""
    with (
        grpc.secure_channel(address, credentials, options=options)
        if credentials is not None
        else grpc.insecure_channel(address)
    ) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout
        )
    status: int = response.status
    return status


def main(argv: list[str]) -> int:
    if not 1 <= len(argv) <= 2:
        print(__doc__, file=sys.stderr)
        return 2
    address, service = argv[0], argv[1] if len(argv) == 2 else ""
    env = Env(os.environ)
    credentials, options = client_credentials(env), client_channel_options(env)
    try:
        env.check()
    except SettingsError as exc:
        print(f"healthcheck: {exc}", file=sys.stderr)
        return 2
    try:
        status = serving_status(address, service, credentials=credentials, options=options)
    except grpc.RpcError as exc:
        print(f"{address}: {exc.code().name}", file=sys.stderr)
        return 1
    print(f"{address}: {health_pb2.HealthCheckResponse.ServingStatus.Name(status)}")
    return 0 if status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
