"""TLS for both services: TLS_CERT_FILE and TLS_KEY_FILE (PEM) switch a service from plaintext to TLS;
TLS_CLIENT_CA_FILE adds mutual TLS (clients must present a certificate that CA signed). The files are read at
start (a missing or unreadable one is a settings problem: exit status 2) and again when they change, so that a
renewed certificate (cert-manager, a Kubernetes secret, certbot) is served without a restart: gRPC asks for the
server's certificate at each new connection's handshake (grpc.dynamic_ssl_server_credentials), and the answer
looks at the files' modification stamps at most once a second, and reads them only when those changed. A new
pair is taken once the certificate and key match (a half-written renewal is not); connections already open go on
with the pair they started with.

The health check (svc_common.healthcheck) reads the same variables, so one command works either way: it
trusts TLS_CA_FILE (default: the service's own certificate, for a self-signed one), presents the service's
certificate as its own under mutual TLS, and checks the name TLS_SERVER_NAME if set.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from svc_common.settings import Env

log = logging.getLogger(__name__)

CHECK_SECONDS = 1.0  # how often, at most, the files' stamps are looked at (at a new connection's handshake)


@dataclass(frozen=True)
class TlsConfig:
    cert: bytes
    key: bytes
    client_ca: bytes | None = None
    # Where they were read from (certificate, key, client CA): read again when they change. None: never.
    files: tuple[Path, Path, Path | None] | None = None

    def server_credentials(self) -> grpc.ServerCredentials:
        mutual = self.client_ca is not None
        if self.files is None:
            return grpc.ssl_server_credentials(
                [(self.key, self.cert)], root_certificates=self.client_ca, require_client_auth=mutual
            )
        reloader = CertificateReloader(*self.files)
        initial = grpc.ssl_server_certificate_configuration([(self.key, self.cert)], root_certificates=self.client_ca)
        # The fetcher may return None ("no change", as grpc's docs say); the type stubs forget it.
        return grpc.dynamic_ssl_server_credentials(
            initial,
            reloader.fetch,  # type: ignore[arg-type]
            require_client_authentication=mutual,
        )


Stamp = tuple[tuple[int, int, int], ...]


class CertificateReloader:
    """The server's certificate configuration for gRPC's fetcher: a new one when the files changed (and hold a
    certificate and key that match), else None (keep the current one). Called from gRPC's threads."""

    def __init__(self, cert: Path, key: Path, client_ca: Path | None) -> None:
        self._paths = (cert, key, client_ca)
        self._lock = threading.Lock()
        self._next_check = 0.0
        self._stamp = self._stamps()

    def _stamps(self) -> Stamp | None:
        try:
            stats = [path.stat() for path in self._paths if path is not None]  # follows symlinks (Kubernetes)
        except OSError:
            return None
        return tuple((stat.st_mtime_ns, stat.st_size, stat.st_ino) for stat in stats)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        now = time.monotonic()
        with self._lock:
            if now < self._next_check:
                return None
            self._next_check = now + CHECK_SECONDS
            stamp = self._stamps()
            if stamp is None or stamp == self._stamp:
                return None
            cert, key, client_ca = self._paths
            try:
                ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)  # they match, and parse
                pair = (key.read_bytes(), cert.read_bytes())
                roots = client_ca.read_bytes() if client_ca is not None else None
            except (OSError, ssl.SSLError) as exc:
                log.warning("TLS files changed but cannot be used yet (%s); serving the previous pair", exc)
                return None
            self._stamp = stamp
        log.info("TLS files changed: new connections get the certificate in %s", cert)
        return grpc.ssl_server_certificate_configuration([pair], root_certificates=roots)


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
    names = ("TLS_CERT_FILE", "TLS_KEY_FILE", "TLS_CLIENT_CA_FILE")
    cert, key, client_ca = (_read(env, n) for n in names)
    cert_path, key_path, ca_path = (env.text(n) for n in names)
    named = {n: env.raw(n) is not None for n in ("TLS_CERT_FILE", "TLS_KEY_FILE", "TLS_CLIENT_CA_FILE")}
    if not named["TLS_CERT_FILE"] and not named["TLS_KEY_FILE"]:
        if named["TLS_CLIENT_CA_FILE"]:
            env.problem("TLS_CLIENT_CA_FILE needs TLS_CERT_FILE and TLS_KEY_FILE")
        return None
    if named["TLS_CERT_FILE"] != named["TLS_KEY_FILE"]:
        env.problem("TLS_CERT_FILE and TLS_KEY_FILE go together (both, or neither for plaintext)")
    if cert is None or key is None:
        return None
    files = (Path(cert_path), Path(key_path), Path(ca_path) if ca_path else None)
    return TlsConfig(cert, key, client_ca, files)


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
