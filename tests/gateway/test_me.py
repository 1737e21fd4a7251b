"""``GET /me``: the agent the token is for, with its load against its capacity (§8, §9)."""

from __future__ import annotations

import uuid

from tests.gateway.harness import bearer


def me(api, agent):
    response = api.get("/me", headers=bearer(agent))
    assert response.status_code == 200, response.text
    return response.json()


def upsert(client, team, capacity):
    agent_id = f"agent-{uuid.uuid4().hex[:10]}"
    assert client.call("hitl.upsert_agent", agent_id=agent_id, name="Ada", status="available",
                       rule_groups=[[team]], capacity=capacity)["status"] == "available"
    return agent_id


def test_load_counts_the_conversations_that_hold_the_agent(api, client, team, waiting):
    # Given Alice, capacity 3, holding nothing
    alice = upsert(client, team, 3)
    try:
        assert me(api, alice) == {"agent_id": alice, "name": "Ada", "status": "available",
                                  "capacity": 3, "load": 0}
        # When she claims two steps
        steps = [waiting(), waiting()]
        for step in steps:
            assert client.call("hitl.claim", execution_id=step["execution_id"],
                               agent_id=alice)["outcome"] == "claimed"
        # Then her load is 2 of 3
        assert (me(api, alice)["capacity"], me(api, alice)["load"]) == (3, 2)
        # And a release brings it down; releasing another agent changes nothing
        client.call("hitl.release", conversation_id=steps[0]["conversation_id"],
                    agent_id="someone-else")
        assert me(api, alice)["load"] == 2
        client.call("hitl.release", conversation_id=steps[0]["conversation_id"],
                    agent_id=alice)
        assert me(api, alice)["load"] == 1
    finally:
        client.call("hitl.remove_agent", agent_id=alice)


def test_an_unlimited_agent_has_a_load_and_a_null_capacity(api, client, team, waiting):
    bob = upsert(client, team, None)
    try:
        step = waiting()
        client.call("hitl.claim", execution_id=step["execution_id"], agent_id=bob)
        assert me(api, bob) == {"agent_id": bob, "name": "Ada", "status": "available",
                                "capacity": None, "load": 1}
    finally:
        client.call("hitl.remove_agent", agent_id=bob)


def test_a_load_is_never_another_agents(api, client, team, waiting):
    # Given Carol's claim, and Dan, whose id is a prefix of hers
    carol = upsert(client, team, 2)
    dan = carol[:-1]
    client.call("hitl.upsert_agent", agent_id=dan, name="Dan", status="available",
                rule_groups=[[team]], capacity=2)
    try:
        step = waiting()
        client.call("hitl.claim", execution_id=step["execution_id"], agent_id=carol)
        # Then the load is Carol's alone
        assert me(api, carol)["load"] == 1
        assert me(api, dan)["load"] == 0
    finally:
        client.call("hitl.remove_agent", agent_id=carol)
        client.call("hitl.remove_agent", agent_id=dan)
