"""The deploy files lock down what docs/security.md says they do: a NetworkPolicy that admits
only the gateway's HTTP port and Prometheus to worker metrics, a Redis that asks for a
password, and sample secrets that nothing accepts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def k8s_docs() -> list[dict[str, Any]]:
    return [doc for path in sorted((DEPLOY / "k8s").glob("*.yaml"))
            for doc in yaml.safe_load_all(path.read_text()) if doc]


def pod_labels() -> dict[str, dict[str, str]]:
    return {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"]
            for d in k8s_docs() if d["kind"] == "Deployment"}


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for rule in selector.get("matchExpressions", []):
        assert rule["operator"] == "In"
        if labels.get(rule["key"]) not in rule["values"]:
            return False
    return True


def policies() -> list[dict[str, Any]]:
    return [d for d in k8s_docs() if d["kind"] == "NetworkPolicy"]


def test_every_pod_is_under_a_default_deny_ingress_policy() -> None:
    deny = [p for p in policies() if p["spec"].get("policyTypes") == ["Ingress"]
            and not p["spec"].get("ingress")]
    assert deny
    for name, labels in pod_labels().items():
        assert any(selects(p["spec"]["podSelector"], labels) for p in deny), name


def test_only_the_gateway_and_worker_metrics_admit_traffic() -> None:
    admitted: dict[str, list[Any]] = {}
    for policy in policies():
        for rule in policy["spec"].get("ingress", []):
            for name, labels in pod_labels().items():
                if selects(policy["spec"]["podSelector"], labels):
                    admitted.setdefault(name, []).append(rule)
    assert set(admitted) == {"hitl-gateway", "hitl-worker-requests", "hitl-worker-events",
                             "hitl-worker-timers", "hitl-worker-webhooks"}, set(admitted)
    for name, rules in admitted.items():
        if name != "hitl-gateway":  # metrics: from Prometheus only, on the metrics port only
            assert all(rule.get("from") for rule in rules), name
            assert [p["port"] for rule in rules for p in rule["ports"]] == [9808], name


def test_compose_redis_requires_a_password_every_client_sends() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert "--requirepass" in compose["services"]["redis"]["command"]
    env = compose["x-hitl-env"]
    for key in ("HITL_BROKER_URL", "HITL_RESULT_BACKEND_URL", "HITL_REDIS_URL"):
        assert env[key].startswith("redis://:${REDIS_PASSWORD"), key


def test_sample_secrets_are_empty() -> None:
    values = dict(line.split("=", 1) for line in (DEPLOY / "env.example").read_text().splitlines()
                  if line and not line.startswith("#"))
    assert values["HITL_SECRET"] == "" and values["REDIS_PASSWORD"] == ""
