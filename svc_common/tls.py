"""TLS for both services: TLS_CERT_FILE and TLS_KEY_FILE (PEM) switch a service from plaintext to TLS;
TLS_CLIENT_CA_FILE adds mutual TLS (clients must present a certificate that CA signed). Files are read once,
at start; a missing or unreadable one is a settings error (exit status 2).

The health check (svc_common.healthcheck) reads the same variables, so one command works either way: it
trusts TLS_CA_FILE (default: the service's own certificate, for a self-signed one), presents the service's
certificate as its own under mutual TLS, and checks the name TLS_SERVER_NAME if set.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc

from svc_common.settings import SettingsError


@dataclass(frozen=True)
class TlsConfig:
    cert: bytes
    key: bytes
    client_ca: bytes | None = None

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.key, self.cert)], root_certificates=self.client_ca, require_client_auth=self.client_ca is not None
        )


def _read(environ: Mapping[str, str], name: str) -> bytes | None:
    path = environ.get(name, "").strip()
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SettingsError(f"{name}: cannot read {path} ({exc.strerror})") from exc


def tls_from_env(environ: Mapping[str, str]) -> TlsConfig | None:
    """The TLS settings, or None for plaintext."""
    cert, key, client_ca = (_read(environ, n) for n in ("TLS_CERT_FILE", "TLS_KEY_FILE", "TLS_CLIENT_CA_FILE"))
    if cert is None and key is None:
        if client_ca is not None:
            raise SettingsError("TLS_CLIENT_CA_FILE needs TLS_CERT_FILE and TLS_KEY_FILE")
        return None
    if cert is None or key is None:
        raise SettingsError("TLS_CERT_FILE and TLS_KEY_FILE go together (both, or neither for plaintext)")
    return TlsConfig(cert, key, client_ca)


def client_channel_options(environ: Mapping[str, str]) -> list[tuple[str, str]]:
    name = environ.get("TLS_SERVER_NAME", "").strip()
    return [("grpc.ssl_target_name_override", name)] if name else []


def client_credentials(environ: Mapping[str, str]) -> grpc.ChannelCredentials | None:
    """Credentials for a client run beside the service with its environment (the health check), or None when
    the service speaks plaintext."""
    config = tls_from_env(environ)
    if config is None:
        return None
    trusted = _read(environ, "TLS_CA_FILE") or config.cert
    if config.client_ca is None:
        return grpc.ssl_channel_credentials(root_certificates=trusted)
    return grpc.ssl_channel_credentials(
        root_certificates=trusted, private_key=config.key, certificate_chain=config.cert
    )
