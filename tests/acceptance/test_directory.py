"""The agent directory: upsert, status, removal (docs/contract.md §5)."""

from __future__ import annotations

from tests.support.steps import execution, request


def test_upsert_set_status_and_remove_answer_once_committed(client, uid):
    agent_id = uid("dir-agent")
    assert client.call("hitl.upsert_agent", agent_id=agent_id, name="Dee", status="busy",
                       rule_groups=[["team:x"], []]) == {"agent_id": agent_id, "status": "busy"}
    assert client.call("hitl.set_agent_status", agent_id=agent_id, status="offline") == {
        "agent_id": agent_id, "status": "offline"}
    # An upsert of an existing agent replaces it
    assert client.call("hitl.upsert_agent", agent_id=agent_id, status="available",
                       rule_groups=[]) == {"agent_id": agent_id, "status": "available"}
    assert client.call("hitl.remove_agent", agent_id=agent_id) == {"agent_id": agent_id,
                                                                   "status": "removed"}
    # Removing an unknown agent is fine too
    assert client.call("hitl.remove_agent", agent_id=agent_id) == {"agent_id": agent_id,
                                                                   "status": "removed"}


def test_an_invalid_directory_update_is_refused(client, uid):
    answer = client.call("hitl.set_agent_status", agent_id=uid("a"), status="sleeping")
    assert answer["status"] == "invalid"
    assert answer["error"]["fields"] == ["status"]
    answer = client.call("hitl.upsert_agent", agent_id=uid("a"), status="available",
                         rule_groups="team:x")
    assert answer["error"]["fields"] == ["rule_groups"]


def test_changing_rule_groups_changes_who_may_claim(client, flow, agents, team):
    alice, bob = agents(), agents()
    step = request(team, flow.reply_to)
    client.call("hitl.request_assistance", **step)
    client.call("hitl.upsert_agent", agent_id=alice, status="available",
                rule_groups=[[f"{team}-other"]])
    assert client.call("hitl.claim", execution_id=step["execution_id"],
                       agent_id=alice)["outcome"] == "not_eligible"
    # An empty rule group sees every conversation
    client.call("hitl.upsert_agent", agent_id=alice, status="available", rule_groups=[[]])
    assert client.call("hitl.claim", execution_id=step["execution_id"],
                       agent_id=alice)["outcome"] == "claimed"
    assert bob


def test_removal_withdraws_the_agents_offers(client, flow, agents, team, streams):
    alice, bob = agents(), agents()
    step = request(team, flow.reply_to)
    eid = step["execution_id"]
    client.call("hitl.request_assistance", **step)
    assert client.call("hitl.remove_agent", agent_id=alice) == {"agent_id": alice,
                                                                "status": "removed"}
    withdrawn = streams.events(alice)[-1]
    assert (withdrawn["type"], withdrawn["execution_id"], withdrawn["state"]) == (
        "assistance.withdrawn", eid, "waiting")
    assert execution(eid).state == "waiting"
    assert client.call("hitl.claim", execution_id=eid, agent_id=alice)["outcome"] == \
        "not_eligible"
    assert client.call("hitl.claim", execution_id=eid, agent_id=bob)["outcome"] == "claimed"
    # Bob's exit withdrawal goes to the agents still offered it, not to the removed one again
    assert [e["type"] for e in streams.events(alice)] == ["assistance.requested",
                                                          "assistance.withdrawn"]


def test_under_reject_policy_all_a_removed_agent_no_longer_must_reject(client, flow, agents,
                                                                       team):
    alice, bob = agents(), agents()
    step = request(team, flow.reply_to, reject_policy="all")
    eid = step["execution_id"]
    client.call("hitl.request_assistance", **step)
    assert client.call("hitl.reject", execution_id=eid,
                       agent_id=alice)["outcome"] == "reject_recorded"
    client.call("hitl.remove_agent", agent_id=bob)
    message = flow.wait_for(eid)
    assert (message["exit"], message["merge_field"]) == (
        "not_claimed", {"reason": "REJECTED", "rejectedBy": [alice]})
    assert execution(eid).state == "exited"


def test_under_reject_policy_all_removal_before_any_reject_leaves_the_rest_to_reject(
        client, flow, agents, team):
    alice, bob = agents(), agents()
    step = request(team, flow.reply_to, reject_policy="all")
    eid = step["execution_id"]
    client.call("hitl.request_assistance", **step)
    client.call("hitl.remove_agent", agent_id=bob)
    assert execution(eid).state == "waiting"
    assert client.call("hitl.reject", execution_id=eid, agent_id=alice)["outcome"] == "rejected"
    assert flow.wait_for(eid)["merge_field"] == {"reason": "REJECTED", "rejectedBy": [alice]}


def test_going_offline_is_not_a_reject(client, flow, agents, team):
    alice, bob = agents(), agents()
    step = request(team, flow.reply_to, reject_policy="all")
    eid = step["execution_id"]
    client.call("hitl.request_assistance", **step)
    client.call("hitl.set_agent_status", agent_id=bob, status="offline")
    assert client.call("hitl.reject", execution_id=eid,
                       agent_id=alice)["outcome"] == "reject_recorded"
    assert execution(eid).state == "waiting"
    # Bob, offline, still holds his popup and may still reject it
    assert client.call("hitl.reject", execution_id=eid, agent_id=bob)["outcome"] == "rejected"
