"""Health, metrics, the OpenAPI schema, the console's files, the development sign-in."""

from __future__ import annotations

import httpx
import pytest

from hitl_workers.gateway.tokens import agent_of
from tests.gateway.harness import Gateway, bearer
from tests.support.ports import free_port

CONTRACT_PATHS = {
    ("get", "/"), ("get", "/agents/{agent_id}/events"), ("get", "/agents/{agent_id}/requests"),
    ("put", "/agents/{agent_id}/status"), ("post", "/executions/{execution_id}/claim"),
    ("post", "/executions/{execution_id}/reject"), ("post", "/executions/{execution_id}/close"),
    ("get", "/healthz"), ("get", "/metrics"),
}


def test_healthz_reports_each_dependency(api):
    response = api.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "detail": None, "checks": {
        "database": "ok", "broker": "ok", "notifications": "ok"}}


def test_metrics_are_prometheus_text_with_hitl_names(api, agents):
    api.get(f"/agents/{agents()}/requests")  # a 401, counted under its route template
    response = api.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert "# TYPE hitl_gateway_requests_total counter" in text
    assert "# TYPE hitl_gateway_sse_connections gauge" in text
    assert 'route="/agents/{agent_id}/requests",status="401"' in text


def test_openapi_lists_every_endpoint_with_its_bodies(api):
    schema = api.get("/openapi.json").json()
    paths = {(method, path) for path, ops in schema["paths"].items() for method in ops}
    assert paths >= CONTRACT_PATHS
    components = schema["components"]["schemas"]
    assert {"StatusIn", "StatusOut", "EventIn", "EventResult", "EventError", "BellEntry",
            "Health", "ValidationErrorBody"} <= set(components)
    assert components["EventIn"]["additionalProperties"] is False
    claim = schema["paths"]["/executions/{execution_id}/claim"]["post"]
    assert {"200", "401", "403", "404", "409", "422"} <= set(claim["responses"])
    assert claim["responses"]["409"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/EventError")
    assert claim["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ValidationErrorBody")
    assert claim["security"]  # bearer or ?token=
    events = schema["paths"]["/agents/{agent_id}/events"]["get"]
    assert "text/event-stream" in events["responses"]["200"]["content"]
    assert {p["name"] for p in events["parameters"]} >= {"agent_id", "last_event_id",
                                                        "Last-Event-ID"}
    bell = schema["paths"]["/agents/{agent_id}/requests"]["get"]
    assert bell["responses"]["200"]["content"]["application/json"]["schema"]["items"][
        "$ref"].endswith("/BellEntry")


def test_unknown_paths_and_methods_answer_json(api):
    missing = api.get("/nowhere")
    assert missing.status_code == 404 and missing.json()["detail"]
    wrong = api.delete("/healthz")
    assert wrong.status_code == 405 and wrong.json()["detail"]


def test_console_page_and_its_files(api):
    page = api.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["referrer-policy"] == "no-referrer"
    assert '<script src="/static/console.js"' in page.text
    for asset in ("/static/console.js", "/static/console.css"):
        assert api.get(asset).status_code == 200
    assert api.get("/?token=whatever").status_code == 200


def test_dev_sign_in_is_off_unless_enabled(api, agents):
    assert api.get("/console/config").json() == {"dev_login": False}
    assert api.get(f"/dev/token/{agents()}").status_code == 404


@pytest.fixture
def dev_gateway(system):
    gateway = Gateway("gateway-dev", env={"HITL_DEV_LOGIN": "true"}).start()
    yield gateway
    gateway.stop()


def test_dev_sign_in_when_enabled(dev_gateway, agents):
    alice = agents()
    with httpx.Client(base_url=dev_gateway.url, timeout=30) as api:
        assert api.get("/console/config").json() == {"dev_login": True}
        issued = api.get(f"/dev/token/{alice}").json()
        assert issued["agent_id"] == alice and agent_of(issued["token"]) == alice
        me = api.get("/me", headers={"Authorization": f"Bearer {issued['token']}"})
        assert me.json()["agent_id"] == alice
        assert "/dev/token/{agent_id}" in api.get("/openapi.json").json()["paths"]
        assert api.get("/dev/token/not%20an%20id").status_code == 422


@pytest.fixture
def gateway_without_broker(system):
    # Nothing listens on this port: the broker is "down" for this gateway only.
    env = {"HITL_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"}
    gateway = Gateway("gateway-nobroker", env=env, ready_path="/console/config").start()
    yield gateway
    gateway.stop()


def test_broker_down_is_503_on_health_and_on_events(gateway_without_broker, agents):
    alice = agents()
    with httpx.Client(base_url=gateway_without_broker.url, timeout=60) as api:
        health = api.get("/healthz")
        assert health.status_code == 503
        body = health.json()
        assert body["status"] == "unavailable"
        assert body["checks"]["database"] == "ok" and body["checks"]["broker"] != "ok"
        assert "broker" in body["detail"]
        claim = api.post("/executions/exec-x/claim", headers=bearer(alice))
        assert claim.status_code == 503
        assert "broker" in claim.json()["detail"]
