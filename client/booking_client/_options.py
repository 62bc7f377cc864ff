"""How a BookingClient connects and retries: TLS towards the services, and the backoff between tries."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import grpc


@dataclass(frozen=True)
class Tls:
    """TLS towards the services: `ca_file` the CA to trust (None: the system's), `cert_file` and `key_file` a
    client certificate for mutual TLS, `server_name` the name to check if the target's host is not it."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        def read(path: str | None) -> bytes | None:
            return Path(path).read_bytes() if path else None

        return grpc.ssl_channel_credentials(read(self.ca_file), read(self.key_file), read(self.cert_file))


@dataclass(frozen=True)
class Backoff:
    """Full-jitter exponential backoff: attempt n waits a random time up to min(cap, base * 2**n)."""

    base: float = 0.05
    cap: float = 2.0

    def delay(self, attempt: int) -> float:
        return random.uniform(0, min(self.cap, self.base * 2**attempt))
