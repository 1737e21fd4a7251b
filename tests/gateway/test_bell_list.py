"""The bell list: the waiting executions an agent may claim now, oldest first (§8)."""

from __future__ import annotations

from datetime import datetime

from tests.gateway.harness import bearer


def bell(api, agent):
    response = api.get(f"/agents/{agent}/requests", headers=bearer(agent))
    assert response.status_code == 200, response.text
    return response.json()


def test_lists_what_the_agent_may_claim_oldest_first_with_the_contract_fields(api, agents,
                                                                             waiting):
    alice = agents()
    first = waiting(popup={"text": "hi", "timer": {"auto_action_timeout": "2m"}})
    second = waiting()
    entries = bell(api, alice)
    assert [e["execution_id"] for e in entries] == [first["execution_id"],
                                                    second["execution_id"]]
    entry = entries[0]
    assert set(entry) == {"execution_id", "conversation_id", "contact", "dispatched_at",
                          "countdown_until_ms", "timeout_at"}
    assert entry["conversation_id"] == first["conversation_id"]
    assert entry["contact"] == first["conversation"]["contact"]
    dispatched = datetime.fromisoformat(entry["dispatched_at"])
    timeout_at = datetime.fromisoformat(entry["timeout_at"])
    assert dispatched.utcoffset().total_seconds() == 0
    assert 299 <= (timeout_at - dispatched).total_seconds() <= 301
    assert abs(entry["countdown_until_ms"] / 1000 - dispatched.timestamp() - 120) < 1
    assert entries[1]["countdown_until_ms"] is None


def test_leaves_out_what_the_agent_may_not_claim(api, agents, waiting, team):
    alice = agents()
    bob = agents()
    outsider = agents(groups=[["team:elsewhere"]])
    for_bob = waiting(specific_agent_id=bob)
    for_anyone = waiting()
    assert [e["execution_id"] for e in bell(api, alice)] == [for_anyone["execution_id"]]
    assert [e["execution_id"] for e in bell(api, bob)] == [for_bob["execution_id"],
                                                          for_anyone["execution_id"]]
    assert bell(api, outsider) == []
    # An agent whose group needs two tags sees nothing with only one of them
    picky = agents(groups=[[team, "vip"]])
    assert bell(api, picky) == []


def test_status_matters_as_the_step_allows(api, agents, waiting):
    agents()
    busy = agents(status="busy")
    strict, lenient = waiting(), waiting(allow_busy=True)
    assert [e["execution_id"] for e in bell(api, busy)] == [lenient["execution_id"]]
    assert strict


def test_a_claimed_step_leaves_everyones_bell_list(api, agents, waiting):
    alice, bob = agents(), agents()
    step = waiting()
    api.post(f"/executions/{step['execution_id']}/claim", headers=bearer(alice))
    assert bell(api, alice) == bell(api, bob) == []


def test_an_empty_rule_group_sees_every_conversation(api, agents, waiting):
    agents()
    everyone = agents(groups=[[]])
    step = waiting()
    assert step["execution_id"] in [e["execution_id"] for e in bell(api, everyone)]


def test_an_agent_not_in_the_directory_has_no_bell_list(api):
    response = api.get("/agents/agent-nobody-here/requests",
                       headers=bearer("agent-nobody-here"))
    assert response.status_code == 401


def test_higher_priority_first_then_the_oldest(api, agents, waiting):
    # §9: settings.priority 0–9, absent is 0
    alice = agents()
    plain = waiting()
    low = waiting(priority=1)
    urgent = waiting(priority=9)
    zero = waiting(priority=0)
    also_urgent = waiting(priority=9)
    assert [e["execution_id"] for e in bell(api, alice)] == [
        s["execution_id"] for s in (urgent, also_urgent, low, plain, zero)]
