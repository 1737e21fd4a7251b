"""The deployment files (deploy/) hang together: what can be checked without Docker or a cluster.

The compose file and the Kubernetes manifests are parsed as YAML and cross-checked (names that
refer to each other exist, every queue has workers, only the request and event workers are
autoscaled, worker pods outlast Celery's soft shutdown). The worker probe is run for real.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import subprocess
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
K8S = DEPLOY / "k8s"
DOCKERFILE = DEPLOY / "Dockerfile"
PROBE_SCRIPT = DEPLOY / "probes" / "hitl-worker-probe"
PROBE_MODULE = DEPLOY / "probes" / "hitl_worker_probe.py"

QUEUES = {"hitl.requests", "hitl.events", "hitl.timers", "hitl.outbox", "hitl.webhooks"}
WORKER_DEPLOYMENTS = {"hitl-worker-requests", "hitl-worker-events", "hitl-worker-timers",
                      "hitl-worker-webhooks"}
# The only autoscaled pools, and the queue (Redis list) each one scales on.
AUTOSCALED = {"hitl-worker-requests": "hitl.requests", "hitl-worker-events": "hitl.events"}
SOFT_SHUTDOWN_TIMEOUT_S = 10  # worker_soft_shutdown_timeout in celeryconfig.py


def load_yaml_all(path: Path) -> list[Any]:
    yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read the deploy/ YAML files")
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def args_of(command: str | list[str] | None) -> list[str]:
    """A command as argv; a `sh -c "exec ..."` wrapper is opened up."""
    if command is None:
        return []
    argv = shlex.split(command) if isinstance(command, str) else [str(a) for a in command]
    if argv[:2] == ["sh", "-c"] and len(argv) > 2:
        argv = shlex.split(argv[2])
    return argv[1:] if argv[:1] == ["exec"] else argv


def is_worker(argv: list[str]) -> bool:
    return argv[:1] == ["celery"] and "worker" in argv


def queues_of(argv: list[str]) -> set[str]:
    for i, arg in enumerate(argv):
        if arg in ("-Q", "--queues") and i + 1 < len(argv):
            return {q for q in argv[i + 1].split(",") if q}
        if arg.startswith("--queues="):
            return {q for q in arg.split("=", 1)[1].split(",") if q}
    return set()


def option(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def seconds(duration: str | int) -> float:
    """A compose duration (`60s`, `1m30s`, `90`) in seconds."""
    if isinstance(duration, int):
        return float(duration)
    total, number = 0.0, ""
    for char in duration:
        if char.isdigit() or char == ".":
            number += char
        else:
            total += float(number) * {"h": 3600, "m": 60, "s": 1}[char]
            number = ""
    return total + (float(number) if number else 0.0)


# --- compose -------------------------------------------------------------------------------

COMPOSE_FILES = [COMPOSE, DEPLOY / "compose.worker-host.yaml"]


def services_of(path: Path) -> dict[str, dict[str, Any]]:
    [compose] = load_yaml_all(path)
    return compose["services"]


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    return services_of(COMPOSE)


def compose_workers(services: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    return {name: argv for name, svc in services.items()
            if is_worker(argv := args_of(svc.get("command")))}


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_every_service_has_an_image_or_a_build(path: Path) -> None:
    services = services_of(path)
    missing = [name for name, svc in services.items() if not (svc.get("image") or svc.get("build"))]
    assert not missing, f"services without image or build: {missing}"


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_depends_on_only_existing_services(path: Path) -> None:
    services = services_of(path)
    for name, svc in services.items():
        depends_on = svc.get("depends_on") or {}
        targets = depends_on if isinstance(depends_on, list) else list(depends_on)
        unknown = set(targets) - set(services)
        assert not unknown, f"{name} depends on unknown services {unknown}"


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_workers_name_their_queues_and_cover_every_queue(path: Path) -> None:
    workers = compose_workers(services_of(path))
    assert set(workers) == {"requests-worker", "events-worker", "timers-worker",
                            "webhooks-worker"}
    for name, argv in workers.items():
        assert queues_of(argv), f"{name} names no queue (-Q)"
        assert queues_of(argv) <= QUEUES, f"{name} consumes unknown queues"
    assert set().union(*(queues_of(argv) for argv in workers.values())) == QUEUES
    assert queues_of(workers["events-worker"]) == {"hitl.events"}
    assert option(workers["events-worker"], "--prefetch-multiplier") == "1"


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_workers_outlast_the_soft_shutdown(path: Path) -> None:
    services = services_of(path)
    for name, argv in compose_workers(services).items():
        svc = services[name]
        assert seconds(svc["stop_grace_period"]) > SOFT_SHUTDOWN_TIMEOUT_S, name
        assert svc["environment"]["REMAP_SIGTERM"] == "SIGQUIT", name
        assert svc.get("healthcheck", {}).get("test"), name
        assert option(argv, "--include") == "hitl_worker_probe", name


def test_compose_runs_every_process_of_the_system(services: dict[str, Any]) -> None:
    assert str(services["postgres"]["image"]).startswith("postgres:16")
    assert str(services["redis"]["image"]).startswith("redis:7")
    assert args_of(services["migrate"]["command"]) == ["hitl-workers", "db", "upgrade"]
    beats = [n for n, svc in services.items() if args_of(svc.get("command"))[3:4] == ["beat"]]
    assert beats == ["beat"]
    assert args_of(services["gateway"]["command"])[:2] == ["hitl-workers", "gateway"]
    flower = args_of(services["flower"]["command"])
    assert "flower" in flower
    assert option(flower, "--basic-auth") == "$$HITL_FLOWER_BASIC_AUTH"


def test_compose_workers_wait_for_the_migration(services: dict[str, Any]) -> None:
    for name in (*compose_workers(services), "beat", "gateway"):
        condition = services[name]["depends_on"]["migrate"]["condition"]
        assert condition == "service_completed_successfully", name
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_compose_long_running_services_have_healthchecks(services: dict[str, Any]) -> None:
    for name in ("postgres", "redis", "flower", "gateway"):
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"


def test_compose_processes_share_one_environment(services: dict[str, Any]) -> None:
    for name, svc in services.items():
        if svc.get("build"):
            env = svc["environment"]
            for key in ("HITL_BROKER_URL", "HITL_RESULT_BACKEND_URL", "HITL_REDIS_URL",
                        "HITL_DATABASE_URL", "HITL_SECRET"):
                assert key in env, f"{name} lacks {key}"


# --- Kubernetes ----------------------------------------------------------------------------


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*") if p.suffix in (".yaml", ".yml"))


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    return [doc for path in manifest_files() for doc in load_yaml_all(path)]


def of_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    return workload["spec"]["template"]["spec"]["containers"]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and selector.items() <= labels.items()


def test_there_are_manifests() -> None:
    assert manifest_files()


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_every_manifest_parses_and_names_its_objects(path: Path) -> None:
    documents = load_yaml_all(path)
    assert documents, f"{path} holds no document"
    for doc in documents:
        assert isinstance(doc, dict)
        assert doc.get("apiVersion") and doc.get("kind"), f"{path}: {doc}"
        assert doc.get("metadata", {}).get("name"), f"{path}: a {doc['kind']} without a name"
        # Namespace-agnostic: `kubectl apply -n NS` decides.
        assert "namespace" not in doc["metadata"], f"{path}: {doc['metadata']['name']}"


def test_object_names_are_unique_per_kind(docs: list[dict[str, Any]]) -> None:
    keys = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(keys) == len(set(keys))


def test_every_deployment_selector_matches_its_template_labels(
        docs: list[dict[str, Any]]) -> None:
    for name, dep in of_kind(docs, "Deployment").items():
        selector = dep["spec"]["selector"]
        assert set(selector) == {"matchLabels"}, f"{name}: only matchLabels is checked here"
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert selects(selector["matchLabels"], labels), name


def test_services_and_disruption_budgets_select_a_deployment(docs: list[dict[str, Any]]) -> None:
    template_labels = [d["spec"]["template"]["metadata"]["labels"]
                       for d in of_kind(docs, "Deployment").values()]
    selectors = [(n, s["spec"]["selector"]) for n, s in of_kind(docs, "Service").items()]
    selectors += [(n, p["spec"]["selector"]["matchLabels"])
                  for n, p in of_kind(docs, "PodDisruptionBudget").items()]
    for name, selector in selectors:
        assert any(selects(selector, labels) for labels in template_labels), name


def test_worker_pools_and_gateway_have_disruption_budgets(docs: list[dict[str, Any]]) -> None:
    deployments = of_kind(docs, "Deployment")
    budgets = of_kind(docs, "PodDisruptionBudget").values()
    for name in (*WORKER_DEPLOYMENTS, "hitl-gateway"):
        labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert any(selects(p["spec"]["selector"]["matchLabels"], labels) for p in budgets), name


def worker_commands(docs: list[dict[str, Any]]) -> dict[str, list[str]]:
    return {name: args_of(containers(dep)[0]["command"])
            for name, dep in of_kind(docs, "Deployment").items()
            if is_worker(args_of(containers(dep)[0].get("command")))}


def test_one_deployment_per_worker_pool_covering_every_queue(docs: list[dict[str, Any]]) -> None:
    workers = worker_commands(docs)
    assert set(workers) == WORKER_DEPLOYMENTS
    for name, argv in workers.items():
        assert queues_of(argv) and queues_of(argv) <= QUEUES, name
    assert set().union(*(queues_of(argv) for argv in workers.values())) == QUEUES
    assert queues_of(workers["hitl-worker-events"]) == {"hitl.events"}
    assert option(workers["hitl-worker-events"], "--prefetch-multiplier") == "1"


def test_worker_pods_outlast_the_soft_shutdown(docs: list[dict[str, Any]]) -> None:
    deployments = of_kind(docs, "Deployment")
    for name in WORKER_DEPLOYMENTS:
        pod = deployments[name]["spec"]["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] > SOFT_SHUTDOWN_TIMEOUT_S, name
        env = {e["name"]: e.get("value") for e in pod["containers"][0].get("env", [])}
        assert env.get("REMAP_SIGTERM") == "SIGQUIT", f"{name}: SIGTERM must start soft shutdown"


def test_only_request_and_event_workers_are_autoscaled(docs: list[dict[str, Any]]) -> None:
    scaled = of_kind(docs, "ScaledObject")
    targets = {so["spec"]["scaleTargetRef"]["name"]: so for so in scaled.values()}
    assert set(targets) == set(AUTOSCALED)
    workers = worker_commands(docs)
    for target, so in targets.items():
        [trigger] = so["spec"]["triggers"]
        assert trigger["type"] == "redis"
        assert trigger["metadata"]["listName"] == AUTOSCALED[target]
        assert AUTOSCALED[target] in queues_of(workers[target])
    hpa_targets = {h["spec"]["scaleTargetRef"]["name"]
                   for h in of_kind(docs, "HorizontalPodAutoscaler").values()}
    assert "hitl-worker-timers" not in hpa_targets


def test_autoscaled_deployments_leave_replicas_to_the_autoscaler(
        docs: list[dict[str, Any]]) -> None:
    deployments = of_kind(docs, "Deployment")
    for name in AUTOSCALED:
        assert "replicas" not in deployments[name]["spec"], name
    assert deployments["hitl-worker-timers"]["spec"]["replicas"] >= 1


def test_one_beat_recreated_never_rolled(docs: list[dict[str, Any]]) -> None:
    beats = [d for d in of_kind(docs, "Deployment").values()
             if args_of(containers(d)[0]["command"])[3:4] == ["beat"]]
    assert len(beats) == 1
    assert beats[0]["spec"]["replicas"] == 1
    assert beats[0]["spec"]["strategy"]["type"] == "Recreate"


def test_migration_job_upgrades_the_schema(docs: list[dict[str, Any]]) -> None:
    [job] = of_kind(docs, "Job").values()
    assert args_of(containers(job)[0]["command"]) == ["hitl-workers", "db", "upgrade"]


def test_containers_have_probes_and_resource_requests(docs: list[dict[str, Any]]) -> None:
    for name, dep in of_kind(docs, "Deployment").items():
        for container in containers(dep):
            requests = container.get("resources", {}).get("requests", {})
            assert {"cpu", "memory"} <= set(requests), f"{name}: resource requests"
            assert "livenessProbe" in container, f"{name}: liveness probe"
            if name != "hitl-beat":  # nothing routes to beat or waits for it to be ready
                assert "readinessProbe" in container, f"{name}: readiness probe"


def test_probes_on_the_heartbeat_file_run_in_workers_that_write_it(
        docs: list[dict[str, Any]]) -> None:
    for name, dep in of_kind(docs, "Deployment").items():
        for container in containers(dep):
            probes = [container.get(p, {}).get("exec", {}).get("command", [])
                      for p in ("startupProbe", "readinessProbe", "livenessProbe")]
            if any("hitl-worker-probe" in command for command in probes):
                argv = args_of(container["command"])
                assert option(argv, "--include") == "hitl_worker_probe", name


def test_referenced_config_maps_and_secrets_exist(docs: list[dict[str, Any]]) -> None:
    config_maps, secrets = set(of_kind(docs, "ConfigMap")), set(of_kind(docs, "Secret"))
    workloads = [*of_kind(docs, "Deployment").values(), *of_kind(docs, "Job").values()]
    for workload in workloads:
        for container in containers(workload):
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in config_maps
                if "secretRef" in source:
                    assert source["secretRef"]["name"] in secrets
            for var in container.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] in secrets, var["name"]
    for auth in of_kind(docs, "TriggerAuthentication").values():
        for ref in auth["spec"]["secretTargetRef"]:
            assert ref["name"] in secrets


# --- image ---------------------------------------------------------------------------------


def test_dockerfile_builds_a_non_root_image_that_prints_help() -> None:
    text = DOCKERFILE.read_text()
    assert "python:3.11-slim" in text
    assert "pip install" in text
    user_lines = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
    assert user_lines and user_lines[-1].split(":")[0] not in ("root", "0")
    assert text.rstrip().splitlines()[-1] == 'CMD ["hitl-workers", "--help"]'
    # Only pip packages are downloaded.
    for word in ("apt-get", "curl ", "wget ", "ADD http"):
        assert word not in text


def test_image_ships_the_worker_probe() -> None:
    text = DOCKERFILE.read_text()
    assert "PYTHONPATH=/opt/hitl/probes" in text
    assert "deploy/probes/hitl_worker_probe.py /opt/hitl/probes/" in text
    assert "/usr/local/bin/hitl-worker-probe" in text
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    assert {"!hitl_workers/", "!deploy/probes/", "!pyproject.toml"} <= set(ignore)


# --- the worker probe, for real ------------------------------------------------------------


@pytest.fixture
def probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.setenv("HITL_WORKER_HEARTBEAT_FILE", str(tmp_path / "heartbeat"))
    monkeypatch.setenv("HITL_WORKER_READY_FILE", str(tmp_path / "ready"))
    spec = importlib.util.spec_from_file_location("hitl_worker_probe_under_test", PROBE_MODULE)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_probe(tmp_path: Path, *args: str) -> int:
    env = {**os.environ, "HITL_WORKER_HEARTBEAT_FILE": str(tmp_path / "heartbeat"),
           "HITL_WORKER_READY_FILE": str(tmp_path / "ready")}
    return subprocess.run(["sh", str(PROBE_SCRIPT), *args], env=env, capture_output=True,
                          timeout=10).returncode


def test_probe_fails_before_the_worker_is_ready(tmp_path: Path) -> None:
    assert run_probe(tmp_path, "live", "60") == 1
    assert run_probe(tmp_path, "ready", "30") == 1


def test_probe_follows_the_worker_lifecycle(tmp_path: Path, probe: ModuleType) -> None:
    # Given a worker that became ready
    probe._on_ready()
    assert run_probe(tmp_path, "ready", "30") == 0
    assert run_probe(tmp_path, "live", "60") == 0

    # When its heartbeats stop for longer than the limit, then it is neither ready nor live
    stale = time.time() - 120
    os.utime(tmp_path / "heartbeat", (stale, stale))
    assert run_probe(tmp_path, "ready", "30") == 1
    assert run_probe(tmp_path, "live", "60") == 1

    # When a heartbeat arrives, then it is alive again
    probe._on_heartbeat()
    assert run_probe(tmp_path, "live", "60") == 0

    # When it starts shutting down, then it is no longer ready but still alive
    probe._on_shutting_down()
    assert run_probe(tmp_path, "ready", "30") == 1
    assert run_probe(tmp_path, "live", "60") == 0
