"""The agent directory over HTTP (docs/contract.md §10 → §5): the same bodies and results as
``hitl.upsert_agent`` / ``hitl.set_agent_status`` / ``hitl.remove_agent``, committed when
answered."""

from __future__ import annotations

import time
import uuid

import pytest

from tests.gateway.harness import bearer
from tests.support.steps import eventually, request


@pytest.fixture
def agent_id(service_api):
    agent = f"agent-{uuid.uuid4().hex[:10]}"
    yield agent
    service_api.delete(f"/v1/agents/{agent}")


def me(api, agent):
    return api.get("/me", headers=bearer(agent)).json()


def not_in_directory(api, agent):
    """The gateway refuses the agent's own token: it is not in the directory (§8 Limits)."""
    response = api.get("/me", headers=bearer(agent))
    return response.status_code == 401 and "not in the directory" in response.json()["detail"]


def test_upsert_then_status_then_remove_round_trip(api, service_api, agent_id, team, flow,
                                                   streams):
    # When a flow engine adds an agent of the team
    created = service_api.put(f"/v1/agents/{agent_id}", json={
        "name": "Ada", "status": "available", "rule_groups": [[team]]})
    # Then 200 with the §5 result, committed: the agent is in the directory
    assert created.status_code == 200, created.text
    assert created.json() == {"agent_id": agent_id, "status": "available"}
    assert me(api, agent_id) == {"agent_id": agent_id, "name": "Ada", "status": "available",
                                 "capacity": None, "load": 0}
    # And a step for the team started over HTTP is offered to it
    step = request(team, flow.reply_to)
    assert service_api.post("/v1/executions", json=step).status_code == 201
    view = service_api.get(f"/v1/executions/{step['execution_id']}").json()
    assert view["offers"] == [{"agent_id": agent_id, "status": "offered"}]
    # When its status is set
    busy = service_api.put(f"/v1/agents/{agent_id}/status", json={"status": "busy"})
    assert busy.status_code == 200 and busy.json() == {"agent_id": agent_id, "status": "busy"}
    assert me(api, agent_id)["status"] == "busy"
    # And updated again (the body may name the same agent)
    renamed = service_api.put(f"/v1/agents/{agent_id}", json={
        "agent_id": agent_id, "name": "Ada L.", "status": "offline", "rule_groups": [[team]]})
    assert renamed.status_code == 200 and renamed.json()["status"] == "offline"
    assert me(api, agent_id)["name"] == "Ada L."
    # When it is removed: its offer is withdrawn and it is gone
    removed = service_api.delete(f"/v1/agents/{agent_id}")
    assert removed.status_code == 200
    assert removed.json() == {"agent_id": agent_id, "status": "removed"}
    # (the gateway caches "is in the directory" for HITL_GATEWAY_AGENT_CACHE_S, 2 s)
    assert eventually(lambda: not_in_directory(api, agent_id), timeout=5)
    time.sleep(0.5)
    assert any(e["type"] == "assistance.withdrawn" and e["execution_id"] == step["execution_id"]
               for e in streams.events(agent_id))
    offers = service_api.get(f"/v1/executions/{step['execution_id']}").json()["offers"]
    assert offers == [{"agent_id": agent_id, "status": "withdrawn"}]


def test_removing_an_unknown_agent_is_200_removed(service_api):
    agent = f"ghost-{uuid.uuid4().hex[:8]}"
    response = service_api.delete(f"/v1/agents/{agent}")
    assert response.status_code == 200
    assert response.json() == {"agent_id": agent, "status": "removed"}


def test_status_of_an_unknown_agent_is_404(service_api):
    agent = f"ghost-{uuid.uuid4().hex[:8]}"
    response = service_api.put(f"/v1/agents/{agent}/status", json={"status": "busy"})
    assert response.status_code == 404 and agent in response.json()["detail"]


@pytest.mark.parametrize(("path", "body", "named"), [
    ("/v1/agents/{agent}", {"agent_id": "someone-else"}, "agent_id"),
    ("/v1/agents/{agent}", {"status": "away"}, "status"),
    ("/v1/agents/{agent}", {"rule_groups": "team:a"}, "rule_groups"),
    ("/v1/agents/{agent}", {"capacity": 0}, "capacity"),
    ("/v1/agents/{agent}", {"capacity": 1001}, "capacity"),
    ("/v1/agents/{agent}", {"capacity": "2"}, "capacity"),
    ("/v1/agents/{agent}", {"rule_groups": [["t"] * 51]}, "rule_groups"),
    ("/v1/agents/{agent}/status", {"status": "away"}, "status"),
    ("/v1/agents/{agent}/status", {}, "status"),
])
def test_a_bad_directory_body_is_422_and_changes_nothing(api, service_api, agent_id, path, body,
                                                          named):
    response = service_api.put(path.format(agent=agent_id), json=body)
    assert response.status_code == 422, response.text
    assert named in response.json()["detail"]
    assert not_in_directory(api, agent_id)  # not created


def test_a_bad_agent_id_in_the_path_is_422(service_api):
    response = service_api.put("/v1/agents/not%20an%20id", json={})
    assert response.status_code == 422


def test_capacity_and_release_over_http(api, service_api, agent_id, team, flow):
    # Given an agent with capacity 1 (§9), holding one conversation
    created = service_api.put(f"/v1/agents/{agent_id}", json={
        "status": "available", "rule_groups": [[team]], "capacity": 1})
    assert created.status_code == 200, created.text
    first = request(team, flow.reply_to)
    assert service_api.post("/v1/executions", json=first).status_code == 201
    claimed = api.post(f"/executions/{first['execution_id']}/claim", headers=bearer(agent_id))
    assert claimed.status_code == 200 and claimed.json()["outcome"] == "claimed"
    # Then its claim of another step is 409 at_capacity, and changes nothing
    second = request(team, flow.reply_to, allow_busy=True)
    assert service_api.post("/v1/executions", json=second).status_code == 201
    full = api.post(f"/executions/{second['execution_id']}/claim", headers=bearer(agent_id))
    assert full.status_code == 409, full.text
    assert (full.json()["outcome"], full.json()["state"]) == ("at_capacity", "waiting")
    assert "capacity" in full.json()["detail"]
    # When the flow engine releases it from the first conversation
    released = service_api.post(f"/v1/conversations/{first['conversation_id']}/release",
                                json={"agent_id": agent_id})
    assert released.status_code == 200, released.text
    assert released.json() == {"conversation_id": first["conversation_id"], "claimed_by": []}
    # Then the claim wins
    won = api.post(f"/executions/{second['execution_id']}/claim", headers=bearer(agent_id))
    assert won.status_code == 200 and won.json()["outcome"] == "claimed"
    # Releasing everyone (no body) and an unknown conversation
    everyone = service_api.post(f"/v1/conversations/{second['conversation_id']}/release")
    assert everyone.status_code == 200 and everyone.json()["claimed_by"] == []
    unknown = service_api.post(f"/v1/conversations/no-{uuid.uuid4().hex}/release")
    assert unknown.status_code == 404


def test_release_needs_a_service_token(api, agent_id):
    response = api.post("/v1/conversations/c-1/release", headers=bearer(agent_id))
    assert response.status_code in (401, 403)
