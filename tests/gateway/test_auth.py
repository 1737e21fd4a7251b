"""Tokens: a token acts as its own agent and no other; a forged, expired or absent one does
nothing (docs/contract.md §8)."""

from __future__ import annotations

import time
from unittest import mock

import pytest
from itsdangerous import URLSafeTimedSerializer

from hitl_workers.gateway.tokens import SALT, InvalidToken, agent_of, make_token
from tests.gateway.harness import bearer, cli

AGENT_ENDPOINTS = [
    ("GET", "/agents/{agent}/events", None),
    ("GET", "/agents/{agent}/requests", None),
    ("PUT", "/agents/{agent}/status", {"status": "busy"}),
    ("GET", "/me", None),
    ("POST", "/executions/{execution}/claim", None),
    ("POST", "/executions/{execution}/reject", None),
    ("POST", "/executions/{execution}/close", {"event_id": "e-1"}),
]


def forged(agent_id: str) -> str:
    return URLSafeTimedSerializer("not-the-secret", salt=SALT).dumps({"agent_id": agent_id})


def expired(agent_id: str) -> str:
    with mock.patch("time.time", return_value=time.time() - 13 * 3600):
        return make_token(agent_id)


def tampered(agent_id: str) -> str:
    _payload, stamp, signature = make_token("someone-else").split(".")
    good_payload = make_token(agent_id).split(".")[0]
    return ".".join([good_payload, stamp, signature])


@pytest.mark.parametrize(("method", "path", "body"), AGENT_ENDPOINTS)
@pytest.mark.parametrize("credential", ["none", "forged", "expired", "tampered", "garbage",
                                        "basic"])
def test_every_agent_endpoint_refuses_without_a_valid_token(api, agents, waiting, method, path,
                                                            body, credential):
    # Given an agent and a waiting step it could claim
    agent = agents()
    step = waiting()
    headers = {
        "none": {},
        "forged": {"Authorization": f"Bearer {forged(agent)}"},
        "expired": {"Authorization": f"Bearer {expired(agent)}"},
        "tampered": {"Authorization": f"Bearer {tampered(agent)}"},
        "garbage": {"Authorization": "Bearer not.a.token"},
        "basic": {"Authorization": "Basic YWdlbnQ6cGFzcw=="},
    }[credential]
    # When it calls without a valid token
    url = path.format(agent=agent, execution=step["execution_id"])
    response = api.request(method, url, headers=headers, json=body)
    # Then: 401, a JSON detail, and nothing happened
    assert response.status_code == 401, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["detail"]
    assert response.headers["www-authenticate"] == "Bearer"
    bell = api.get(f"/agents/{agent}/requests", headers=bearer(agent)).json()
    assert [e["execution_id"] for e in bell] == [step["execution_id"]]


def test_the_token_is_checked_before_the_body(api, agents, waiting):
    agent = agents()
    step = waiting()
    url = f"/executions/{step['execution_id']}/claim"
    assert api.post(url, json={"evil": 1}).status_code == 401
    assert api.put(f"/agents/{agent}/status", json={"status": "asleep"}).status_code == 401
    # Another agent's token on a malformed status body: refused as another agent first
    other = api.put(f"/agents/{agent}/status", json={"status": "asleep"},
                    headers=bearer(agents()))
    assert other.status_code == 403
    # Only a body that is not JSON at all is read (and refused) before the token
    unparsable = api.post(url, content=b"{", headers={"content-type": "application/json"})
    assert unparsable.status_code == 422


def test_forged_token_in_the_query_is_refused_too(api, agents):
    agent = agents()
    response = api.get(f"/agents/{agent}/requests", params={"token": forged(agent)})
    assert response.status_code == 401
    assert "signature" in response.json()["detail"]


@pytest.mark.parametrize(("method", "path", "body"), AGENT_ENDPOINTS[:3])
def test_a_token_for_agent_a_never_acts_as_agent_b(api, agents, client, method, path, body):
    # Given agents A and B
    alice, bob = agents(), agents()
    # When A's token is used on B's endpoints
    response = api.request(method, path.format(agent=bob), headers=bearer(alice), json=body)
    # Then 403, and B is unchanged
    assert response.status_code == 403, response.text
    assert alice in response.json()["detail"] and bob in response.json()["detail"]
    me = api.get("/me", headers=bearer(bob)).json()
    assert me == {"agent_id": bob, "name": bob, "status": "available", "capacity": None,
                  "load": 0}


def test_agent_events_act_as_the_token_agent_only(api, agents, waiting):
    # Given a step both agents may claim
    alice, bob = agents(), agents()
    step = waiting()
    # When Alice's token claims it, with bob's id smuggled into the body
    smuggled = api.post(f"/executions/{step['execution_id']}/claim", headers=bearer(alice),
                        json={"agent_id": bob})
    # Then the body is refused, and a plain claim is Alice's, never Bob's
    assert smuggled.status_code == 422
    won = api.post(f"/executions/{step['execution_id']}/claim", headers=bearer(alice))
    assert won.status_code == 200
    assert won.json()["merge_field"] == {"addClaimedBy": alice}


def test_query_token_and_bearer_both_work(api, agents):
    agent = agents()
    by_query = api.get("/me", params={"token": make_token(agent)})
    by_header = api.get("/me", headers=bearer(agent))
    assert by_query.status_code == by_header.status_code == 200
    assert by_query.json()["agent_id"] == by_header.json()["agent_id"] == agent


def test_health_and_metrics_need_no_token(api):
    assert api.get("/healthz").status_code == 200
    assert api.get("/metrics").status_code == 200


def test_token_round_trip_and_refusals():
    token = make_token("agent-7")
    assert agent_of(token) == "agent-7"
    for bad in (forged("agent-7"), expired("agent-7"), tampered("agent-7"), "", "x.y.z"):
        with pytest.raises(InvalidToken):
            agent_of(bad)


def test_cli_prints_a_token_for_the_agent():
    import subprocess

    done = subprocess.run([*cli(), "token", "agent:7@x"], capture_output=True, text=True,
                          check=True)
    assert agent_of(done.stdout.strip()) == "agent:7@x"
    refused = subprocess.run([*cli(), "token", "not an id"], capture_output=True, text=True)
    assert refused.returncode == 2
    assert "agent id" in refused.stderr
