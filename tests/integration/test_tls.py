"""TLS: TLS_CERT_FILE and TLS_KEY_FILE switch a service to TLS, TLS_CLIENT_CA_FILE to mutual TLS; the health
check command speaks whatever its service speaks; bad TLS settings are one line and exit status 2."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from booking_api.notify.v1 import notify_pb2, notify_pb2_grpc
from tests.support.events import EventSystem, eventually
from tests.support.grpcurl import Grpcurl
from tests.support.helpers import auth, token
from tests.support.servers import booking_env, refused_start

SERVING = health_pb2.HealthCheckResponse.SERVING


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def issue(directory: Path, name: str, subject: str, extensions: str) -> None:
    """A key and a certificate for `name`, signed by the CA in `directory`."""
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", subject, cwd=directory)  # fmt: skip
    (directory / f"{name}.ext").write_text(extensions)
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=directory)  # fmt: skip


def make_pki(directory: Path) -> Path:
    """A CA, a server certificate for localhost and 127.0.0.1, and a client certificate, in `directory`."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
            "-subj", "/CN=test CA", cwd=directory)  # fmt: skip
    issue(directory, "server", "/CN=localhost", "subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    issue(directory, "client", "/CN=a client", "extendedKeyUsage=clientAuth\n")
    return directory


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield make_pki(tmp_path_factory.mktemp("pki"))


def channel(address: str, pki: Path, *, client: bool = False) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(pki / "ca.crt").read_bytes(),
        private_key=(pki / "client.key").read_bytes() if client else None,
        certificate_chain=(pki / "client.crt").read_bytes() if client else None,
    )
    return grpc.aio.secure_channel(address, credentials)


async def health(chan: grpc.aio.Channel) -> int:
    response = await health_pb2_grpc.HealthStub(chan).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return int(response.status)


def tls_env(pki: Path, *, mutual: bool = False) -> dict[str, str]:
    env = {
        "TLS_CERT_FILE": str(pki / "server.crt"),
        "TLS_KEY_FILE": str(pki / "server.key"),
        "TLS_CA_FILE": str(pki / "ca.crt"),  # what the health check trusts
    }
    if mutual:
        env["TLS_CLIENT_CA_FILE"] = str(pki / "ca.crt")
    return env


async def test_a_service_with_a_certificate_speaks_tls_only(system: EventSystem, pki: Path) -> None:
    notify = system.notify(**tls_env(pki))  # started: its health check spoke TLS
    async with channel(notify.address, pki) as secure:
        assert await health(secure) == SERVING
        call = notify_pb2_grpc.NotifyServiceStub(secure).Subscribe(
            notify_pb2.SubscribeRequest(), metadata=auth("admin", "ops")
        )
        await call.initial_metadata()  # an authenticated RPC over TLS
        call.cancel()
    async with grpc.aio.insecure_channel(notify.address) as plain:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await health(plain)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    checked = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "svc_common.healthcheck", notify.address],
        env={**os.environ, **tls_env(pki)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert checked.returncode == 0, checked.stderr


async def test_mutual_tls_refuses_a_client_without_a_certificate(system: EventSystem, pki: Path) -> None:
    notify = system.notify(**tls_env(pki, mutual=True))
    async with channel(notify.address, pki, client=True) as with_certificate:
        assert await health(with_certificate) == SERVING
    async with channel(notify.address, pki) as without:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await health(without)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"TLS_CERT_FILE": "server.crt"}, "TLS_CERT_FILE and TLS_KEY_FILE go together"),
        ({"TLS_CERT_FILE": "server.crt", "TLS_KEY_FILE": "missing.key"}, "TLS_KEY_FILE: cannot read"),
        ({"TLS_CLIENT_CA_FILE": "ca.crt"}, "TLS_CLIENT_CA_FILE needs TLS_CERT_FILE and TLS_KEY_FILE"),
    ],
)
def test_bad_tls_settings_are_one_line_and_exit_status_2(
    booking_db_url: str, redis_url: str, pki: Path, settings: dict[str, str], message: str
) -> None:
    env = booking_env(booking_db_url, redis_url) | {name: str(pki / file) for name, file in settings.items()}
    assert message in refused_start("booking_service", env)


async def test_a_renewed_certificate_reaches_new_connections_without_a_restart(
    system: EventSystem, pki: Path, tmp_path: Path
) -> None:
    """The files are replaced as cert-manager or certbot does (each renamed into place); new connections get the
    new pair within seconds, connections already open go on."""
    (tmp_path / "renewed").mkdir()
    renewed = make_pki(tmp_path / "renewed")  # another CA: a client trusting only it tells the pairs apart
    live = tmp_path / "live"
    live.mkdir()

    def install(source: Path, *names: str) -> None:
        for name in names or ("server.crt", "server.key"):
            (live / f"{name}.new").write_bytes((source / name).read_bytes())
            os.replace(live / f"{name}.new", live / name)

    async def served(trusted: Path) -> bool:
        async with channel(notify.address, trusted) as fresh:
            try:
                return bool(await health(fresh) == SERVING)
            except grpc.aio.AioRpcError:
                return False

    install(pki)
    notify = system.notify(
        TLS_CERT_FILE=str(live / "server.crt"), TLS_KEY_FILE=str(live / "server.key"), TLS_CA_FILE=str(pki / "ca.crt")
    )
    async with channel(notify.address, pki) as before:
        assert await health(before) == SERVING
        install(renewed, "server.crt")  # half way: the new certificate beside the old key is not taken
        await asyncio.sleep(2.5)  # past the next look at the files (at most once a second)
        assert await served(pki), "a certificate and key that do not match were taken"
        install(renewed, "server.key")
        await eventually(lambda: served(renewed), lambda: "new connections still get the old certificate", within=30)
        assert await health(before) == SERVING  # open connections keep the pair they started with
        async with channel(notify.address, pki) as old_trust:
            with pytest.raises(grpc.aio.AioRpcError):
                await health(old_trust)


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mutual-tls"])
def test_the_grpcurl_call_of_docs_operations_works_as_printed(system: EventSystem, pki: Path, mutual: bool) -> None:
    """docs/operations.md's TLS call with the real grpcurl: the CA file, and for mutual TLS the client pair."""
    page = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    (call,) = [line for line in page.splitlines() if line.startswith("grpcurl -cacert")]
    if mutual:
        assert "also -cert client.crt -key client.key" in page
        call = call.replace("-cacert ca.crt", "-cacert ca.crt -cert client.crt -key client.key")
    booking = system.booking(**tls_env(pki, mutual=mutual))
    for name in ("ca.crt", "client.crt", "client.key"):
        call = call.replace(f" {name} ", f" {pki / name} ")
    result = Grpcurl({"ADMIN": token("admin", "root")}).run(call.replace("localhost:50051", booking.address))
    assert isinstance(result, dict)  # an answer ({}: no bookings yet), over TLS
