"""The deployment files, checked offline: the Kubernetes manifests against the API schemas (kubernetes-validate)
and the probes, grace and disruption budget they must have; docker-compose.yml's topology and its required
secret; the Dockerfile's build from the lock files. (No container engine runs on our machines: the image is not
built here, and the nginx configuration is exercised by tests/system/test_cluster.py through `make cluster`'s
runner.)"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from svc_common.redis_client import SentinelTarget

PROJECT = Path(__file__).resolve().parents[2]
KUBERNETES = PROJECT / "deploy" / "kubernetes"
MANIFESTS = sorted(path for path in KUBERNETES.glob("*.yaml") if path.name != "kustomization.yaml")
SERVICES = {"booking": ("booking.v1.BookingService", 50051), "notify": ("notify.v1.NotifyService", 50052)}


def resources(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_each_manifest_is_valid_against_the_kubernetes_api_schemas(path: Path) -> None:
    for resource in resources(path):
        kubernetes_validate.validate(resource, kubernetes_validate.latest_version(), strict=True)


def test_each_service_has_a_deployment_with_grpc_probes_a_drain_grace_and_a_disruption_budget() -> None:
    by_kind: dict[tuple[str, str], dict[str, Any]] = {}
    for path in MANIFESTS:
        for resource in resources(path):
            by_kind[resource["kind"], resource["metadata"]["name"]] = resource
    for name, (service, port) in SERVICES.items():
        pod = by_kind["Deployment", name]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["livenessProbe"]["grpc"] == {"port": port, "service": "liveness"}
        assert container["readinessProbe"]["grpc"] == {"port": port, "service": service}
        env = {e["name"]: e for e in container["env"]}
        assert pod["terminationGracePeriodSeconds"] > float(env["SHUTDOWN_GRACE_SECONDS"]["value"])
        assert "value" not in env["JWT_SECRET"]  # from a Secret, never written here
        assert pod["securityContext"]["runAsNonRoot"]
        budget = by_kind["PodDisruptionBudget", name]["spec"]
        assert budget["selector"]["matchLabels"] == by_kind["Deployment", name]["spec"]["selector"]["matchLabels"]
        assert budget["minAvailable"] >= 1


def test_compose_runs_two_of_each_service_behind_nginx_and_requires_a_jwt_secret() -> None:
    compose = yaml.safe_load((PROJECT / "docker-compose.yml").read_text())
    services = compose["services"]
    plain = {name for name, service in services.items() if "profiles" not in service}
    assert {"booking-1", "booking-2", "notify-1", "notify-2", "nginx", "postgres", "redis"} == plain
    for name in ("booking-1", "booking-2", "notify-1", "notify-2"):
        assert services[name]["build"] == "."
        assert services[name]["environment"]["JWT_SECRET"].startswith("${JWT_SECRET:?")  # no default
    nginx = services["nginx"]
    assert nginx["ports"] == ["50050:50050"]
    assert "./deploy/nginx/nginx.conf:/etc/nginx/nginx.conf:ro" in nginx["volumes"]
    upstreams = (PROJECT / "deploy" / "nginx" / "upstreams.conf").read_text()
    assert set(re.findall(r"server (\S+):\d+", upstreams)) == {"booking-1", "booking-2", "notify-1", "notify-2"}


def test_the_image_is_multi_stage_non_root_health_checked_built_from_the_locks_without_devtools() -> None:
    dockerfile = (PROJECT / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", dockerfile, flags=re.M)) == 2
    assert re.search(r"^USER 10001$", dockerfile, flags=re.M)
    assert re.search(r"^HEALTHCHECK .*\n.*svc_common\.healthcheck", dockerfile, flags=re.M)
    installs = re.findall(r"pip (install|wheel) ([^\n\\&]*)", dockerfile)
    assert installs and all("--require-hashes" in args or "--no-deps" in args for _, args in installs), installs
    copied = {line.split()[1] for line in dockerfile.splitlines() if line.startswith("COPY ") and "--from" not in line}
    assert "devtools" not in copied and "." not in copied, copied  # the wheel and image hold no development tools


def locked(path: Path) -> dict[str, str]:
    pins = re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", path.read_text(), flags=re.M)
    return {re.sub(r"[-_.]+", "-", name).lower(): version for name, version in pins}


def test_the_lock_files_pin_every_dependency_both_distributions_declare_with_hashes() -> None:
    """The image installs the services and the client (booking_api's owner, built from the checkout, so its own
    name is not pinned) from the locks alone."""
    project = tomllib.loads((PROJECT / "pyproject.toml").read_text())
    client = tomllib.loads((PROJECT / "client" / "pyproject.toml").read_text())
    image = PROJECT / "deploy" / "image"
    for declared, lock in (
        (project["project"]["dependencies"] + client["project"]["dependencies"], image / "requirements.lock"),
        (project["build-system"]["requires"] + client["build-system"]["requires"], image / "build-requirements.lock"),
    ):
        pins = locked(lock)
        names = {re.sub(r"[-_.]+", "-", re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0]).lower() for d in declared}
        assert names - {"slotledger-client"} <= pins.keys(), names - pins.keys()
        assert lock.read_text().count("--hash=sha256:") >= len(pins)


def test_compose_has_a_sentinel_profile_whose_url_the_services_take() -> None:
    compose = yaml.safe_load((PROJECT / "docker-compose.yml").read_text())
    services = compose["services"]
    profiled = {name for name, service in services.items() if service.get("profiles") == ["sentinel"]}
    assert profiled == {"redis-replica", "sentinel-1", "sentinel-2", "sentinel-3"}
    assert "--replicaof" in services["redis-replica"]["command"]
    for n in (1, 2, 3):
        script = services[f"sentinel-{n}"]["command"][0]
        assert "'sentinel monitor events redis 6379 2'" in script and "--sentinel" in script
    url = "redis+sentinel://sentinel-1:26379,sentinel-2:26379,sentinel-3:26379/events"
    assert url in (PROJECT / "docker-compose.yml").read_text()  # the command the file's header gives
    assert SentinelTarget.parse(url).sentinels == (("sentinel-1", 26379), ("sentinel-2", 26379), ("sentinel-3", 26379))
    for name in ("booking-1", "notify-1"):
        assert services[name]["environment"]["REDIS_URL"] == "${REDIS_URL:-redis://redis:6379/0}"


def by_kind() -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["kind"], r["metadata"]["name"]): r for path in MANIFESTS for r in resources(path)}


def test_kustomize_applies_every_manifest_and_names_the_image_of_each_deployment_with_a_registry() -> None:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == [path.name for path in MANIFESTS]
    (image,) = kustomization["images"]
    registry = image["name"].split("/", 1)[0]
    assert "." in registry or ":" in registry, image  # a registry host, not Docker Hub's implicit one
    for name in SERVICES:
        (container,) = by_kind()["Deployment", name]["spec"]["template"]["spec"]["containers"]
        assert container["image"].rsplit(":", 1)[0] == image["name"]
    compose = yaml.safe_load((PROJECT / "docker-compose.yml").read_text())
    assert compose["services"]["booking-1"]["image"].startswith("${IMAGE:-" + image["name"] + "}:")


def test_the_ingress_terminates_tls_and_routes_each_service_and_health_by_header() -> None:
    main, shared = by_kind()["Ingress", "booking-backend"], by_kind()["Ingress", "booking-backend-notify-shared"]
    for ingress in (main, shared):
        assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/backend-protocol"] == "GRPC"
        assert ingress["spec"]["tls"][0]["secretName"] == "booking-backend-tls"
    routes = {p["path"]: p["backend"]["service"]["name"] for p in main["spec"]["rules"][0]["http"]["paths"]}
    assert routes == {"/booking.v1.BookingService/": "booking", "/notify.v1.NotifyService/": "notify", "/": "booking"}
    annotations = shared["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/canary-by-header"] == "x-service"
    assert annotations["nginx.ingress.kubernetes.io/canary-by-header-value"] == "notify"
    assert shared["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"] == "notify"


def test_prometheus_scrapes_each_service_where_it_serves_metrics() -> None:
    config = yaml.safe_load((PROJECT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    compose = yaml.safe_load((PROJECT / "docker-compose.yml").read_text())["services"]
    for name in SERVICES:
        targets = jobs[name]["static_configs"][0]["targets"]
        for target in targets:
            host, port = target.split(":")
            assert compose[host]["environment"]["METRICS_LISTEN"] == f"0.0.0.0:{port}", target
        assert len(targets) == 2
        pod = by_kind()["Deployment", name]["spec"]["template"]
        (container,) = pod["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        annotations = pod["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert env["METRICS_LISTEN"] == f"0.0.0.0:{annotations['prometheus.io/port']}"
    assert jobs["kubernetes-pods"]["kubernetes_sd_configs"] == [{"role": "pod"}]


def test_compose_and_the_manifests_give_booking_two_database_roles() -> None:
    compose = yaml.safe_load((PROJECT / "docker-compose.yml").read_text())["services"]
    environment = compose["booking-1"]["environment"]
    assert environment["DATABASE_URL"].startswith("postgresql://booking_app@")
    assert environment["MIGRATION_DATABASE_URL"].startswith("postgresql://booking_owner@")
    init = (PROJECT / "deploy" / "postgres" / "init.sql").read_text()
    assert "CREATE ROLE booking_owner LOGIN" in init and "CREATE ROLE booking_app LOGIN" in init
    assert "ALTER DATABASE booking OWNER TO booking_owner" in init
    assert "./deploy/postgres/init.sql:/docker-entrypoint-initdb.d/init.sql:ro" in compose["postgres"]["volumes"]
    (container,) = by_kind()["Deployment", "booking"]["spec"]["template"]["spec"]["containers"]
    secrets = {e["name"]: e["valueFrom"]["secretKeyRef"]["key"] for e in container["env"] if "valueFrom" in e}
    assert secrets["DATABASE_URL"] == "DATABASE_URL" and secrets["MIGRATION_DATABASE_URL"] == "MIGRATION_DATABASE_URL"
