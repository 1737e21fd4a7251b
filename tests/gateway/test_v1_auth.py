"""Service tokens and agent tokens never stand in for each other (docs/contract.md §10): the /v1
routes want a service token (401 without a valid one, 403 for an agent's), the agent routes of
§8 refuse a service token with 403."""

from __future__ import annotations

import subprocess
import uuid

import pytest
from itsdangerous import URLSafeTimedSerializer

from hitl_workers.gateway.service_auth import (
    SERVICE_SALT,
    InvalidServiceToken,
    make_service_token,
    service_of,
)
from hitl_workers.gateway.tokens import SALT, InvalidToken, agent_of, make_token
from tests.gateway.flow_http import service_bearer
from tests.gateway.harness import bearer, cli

V1_ROUTES = [
    ("POST", "/v1/executions", {"execution_id": "x", "conversation_id": "y"}),
    ("GET", "/v1/executions/{execution}", None),
    ("POST", "/v1/executions/{execution}/cancel", None),
    ("PUT", "/v1/agents/{agent}", {"status": "busy"}),
    ("PUT", "/v1/agents/{agent}/status", {"status": "busy"}),
    ("DELETE", "/v1/agents/{agent}", None),
]
AGENT_ROUTES = [
    ("GET", "/agents/{agent}/events", None),
    ("GET", "/agents/{agent}/requests", None),
    ("PUT", "/agents/{agent}/status", {"status": "busy"}),
    ("GET", "/me", None),
    ("POST", "/executions/{execution}/claim", None),
    ("POST", "/executions/{execution}/reject", None),
    ("POST", "/executions/{execution}/close", None),
]


def _url(path: str, agent: str, execution: str) -> str:
    return path.format(agent=agent, execution=execution)


@pytest.mark.parametrize(("method", "path", "body"), V1_ROUTES)
@pytest.mark.parametrize("credential", ["none", "garbage", "forged", "agent-salt-payload"])
def test_v1_routes_refuse_without_a_valid_service_token(api, agents, waiting, method, path,
                                                        body, credential):
    # Given an agent and a waiting step
    agent = agents()
    step = waiting()
    forged = URLSafeTimedSerializer("not-the-secret", salt=SERVICE_SALT).dumps(
        {"service": "flow"})
    # A payload naming a service, but signed as an agent token: it is an agent token of nobody
    crossed = URLSafeTimedSerializer("test-secret", salt=SALT).dumps({"service": "flow"})
    headers = {"none": {}, "garbage": {"Authorization": "Bearer not.a.token"},
               "forged": {"Authorization": f"Bearer {forged}"},
               "agent-salt-payload": {"Authorization": f"Bearer {crossed}"}}[credential]
    # When a /v1 route is called without a valid service token
    response = api.request(method, _url(path, agent, step["execution_id"]), headers=headers,
                           json=body)
    # Then 401 with a JSON detail, and nothing happened
    assert response.status_code == 401, response.text
    assert response.json()["detail"]
    assert response.headers["www-authenticate"] == "Bearer"
    assert api.get("/me", headers=bearer(agent)).json()["status"] == "available"


@pytest.mark.parametrize(("method", "path", "body"), V1_ROUTES)
def test_an_agent_token_gets_403_on_every_v1_route(api, agents, waiting, method, path, body):
    agent = agents()
    step = waiting()
    response = api.request(method, _url(path, agent, step["execution_id"]),
                           headers=bearer(agent), json=body)
    assert response.status_code == 403, response.text
    assert "service token" in response.json()["detail"]
    # Nothing changed: the agent is still there and available, the step still waits
    assert api.get("/me", headers=bearer(agent)).json()["status"] == "available"
    view = api.get(f"/v1/executions/{step['execution_id']}", headers=service_bearer()).json()
    assert view["state"] == "waiting"


@pytest.mark.parametrize(("method", "path", "body"), AGENT_ROUTES)
@pytest.mark.parametrize("where", ["header", "query"])
def test_a_service_token_gets_403_on_every_agent_route(api, agents, waiting, method, path,
                                                       body, where):
    agent = agents()
    step = waiting()
    token = make_service_token(agent)  # even one named like the agent
    kwargs = ({"headers": {"Authorization": f"Bearer {token}"}} if where == "header"
              else {"params": {"token": token}})
    response = api.request(method, _url(path, agent, step["execution_id"]), json=body,
                           **kwargs)
    assert response.status_code == 403, response.text
    assert "service token" in response.json()["detail"]
    view = api.get(f"/v1/executions/{step['execution_id']}", headers=service_bearer()).json()
    assert view["state"] == "waiting"


def test_the_two_kinds_of_token_never_check_out_as_each_other():
    name = f"n-{uuid.uuid4().hex[:6]}"
    assert service_of(make_service_token(name)) == name
    assert agent_of(make_token(name)) == name
    with pytest.raises(InvalidServiceToken):
        service_of(make_token(name))
    with pytest.raises(InvalidToken):
        agent_of(make_service_token(name))


def test_cli_prints_a_service_token():
    done = subprocess.run([*cli(), "token", "--service", "flow-engine:1"], capture_output=True,
                          text=True, check=True)
    assert service_of(done.stdout.strip()) == "flow-engine:1"
    with pytest.raises(InvalidToken):
        agent_of(done.stdout.strip())
    for wrong in (["token"], ["token", "a-1", "--service", "s"], ["token", "--service", "a b"]):
        refused = subprocess.run([*cli(), *wrong], capture_output=True, text=True)
        assert refused.returncode == 2, wrong
        assert "AGENT_ID" in refused.stderr or "service" in refused.stderr
