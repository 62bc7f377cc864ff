"""TLS for both services: TLS_CERT_FILE and TLS_KEY_FILE (PEM) switch a service from plaintext to TLS;
TLS_CLIENT_CA_FILE adds mutual TLS (clients must present a certificate that CA signed). Files are read once,
at start; a missing or unreadable one is a settings problem (exit status 2).

The health check (svc_common.healthcheck) reads the same variables, so one command works either way: it
trusts TLS_CA_FILE (default: the service's own certificate, for a self-signed one), presents the service's
certificate as its own under mutual TLS, and checks the name TLS_SERVER_NAME if set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

from svc_common.settings import Env


@dataclass(frozen=True)
class TlsConfig:
    cert: bytes
    key: bytes
    client_ca: bytes | None = None

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.key, self.cert)], root_certificates=self.client_ca, require_client_auth=self.client_ca is not None
        )


def _read(env: Env, name: str) -> bytes | None:
    path = env.text(name)
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        env.problem(f"{name}: cannot read {path} ({exc.strerror})")
        return None


def tls_from_env(env: Env) -> TlsConfig | None:
    """The TLS settings, or None for plaintext (a problem is recorded in `env` when they are incomplete)."""
    cert, key, client_ca = (_read(env, n) for n in ("TLS_CERT_FILE", "TLS_KEY_FILE", "TLS_CLIENT_CA_FILE"))
    named = {n: env.raw(n) is not None for n in ("TLS_CERT_FILE", "TLS_KEY_FILE", "TLS_CLIENT_CA_FILE")}
    if not named["TLS_CERT_FILE"] and not named["TLS_KEY_FILE"]:
        if named["TLS_CLIENT_CA_FILE"]:
            env.problem("TLS_CLIENT_CA_FILE needs TLS_CERT_FILE and TLS_KEY_FILE")
        return None
    if named["TLS_CERT_FILE"] != named["TLS_KEY_FILE"]:
        env.problem("TLS_CERT_FILE and TLS_KEY_FILE go together (both, or neither for plaintext)")
    if cert is None or key is None:
        return None
    return TlsConfig(cert, key, client_ca)


def client_channel_options(env: Env) -> list[tuple[str, str]]:
    name = env.text("TLS_SERVER_NAME")
    return [("grpc.ssl_target_name_override", name)] if name else []


def client_credentials(env: Env) -> grpc.ChannelCredentials | None:
    """Credentials for a client run beside the service with its environment (the health check), or None when
    the service speaks plaintext. Call `env.check()` after: a bad TLS setting is a problem recorded there."""
    config = tls_from_env(env)
    if config is None:
        return None
    trusted = _read(env, "TLS_CA_FILE") or config.cert
    if config.client_ca is None:
        return grpc.ssl_channel_credentials(root_certificates=trusted)
    return grpc.ssl_channel_credentials(
        root_certificates=trusted, private_key=config.key, certificate_chain=config.cert
    )
