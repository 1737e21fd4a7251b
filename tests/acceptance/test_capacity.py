"""Capacity and release through real workers (docs/contract.md §9)."""

from __future__ import annotations

import uuid
from collections import Counter

import pytest

from tests.support.steps import audit_trail, call_at_once, conversation, execution, request


@pytest.fixture
def capped(client, team):
    """``capped(capacity) -> agent_id``: an available agent of the team with a capacity."""
    created: list[str] = []

    def make(capacity: int | None, status: str = "available") -> str:
        agent_id = f"agent-{uuid.uuid4().hex[:10]}"
        assert client.call("hitl.upsert_agent", agent_id=agent_id, status=status,
                           rule_groups=[[team]], capacity=capacity) == {
            "agent_id": agent_id, "status": status}
        created.append(agent_id)
        return agent_id

    yield make
    for agent_id in created:
        client.call("hitl.remove_agent", agent_id=agent_id)


def start(client, team, flow, **settings):
    step = request(team, flow.reply_to, **settings)
    answer = client.call("hitl.request_assistance", **step)
    return step, answer


@pytest.mark.parametrize("capacity", [0, 1001, "2", True, 2.5])
def test_a_capacity_out_of_range_or_not_an_integer_is_refused(client, uid, capacity):
    answer = client.call("hitl.upsert_agent", agent_id=uid("a"), status="available",
                         rule_groups=[], capacity=capacity)
    assert answer["status"] == "invalid"
    assert answer["error"]["fields"] == ["capacity"]


def test_an_agent_at_capacity_answers_at_capacity_until_a_release_frees_a_slot(
        client, flow, team, capped):
    alice = capped(1)
    first, _ = start(client, team, flow)
    assert client.call("hitl.claim", execution_id=first["execution_id"],
                       agent_id=alice)["outcome"] == "claimed"
    second, _ = start(client, team, flow, allow_busy=True)
    eid = second["execution_id"]
    # At capacity: the claim answers at_capacity and changes nothing
    answer = client.call("hitl.claim", execution_id=eid, agent_id=alice)
    assert (answer["outcome"], answer["state"], answer["exit"]) == ("at_capacity", "waiting",
                                                                    None)
    assert execution(eid).state == "waiting"
    assert conversation(second["conversation_id"]).claimed_by == []
    refusal = [r for r in audit_trail(eid) if r.kind == "claim_refused"][-1]
    assert (refusal.agent_id, refusal.detail) == (alice, {"reason": "at_capacity"})
    # A release frees the slot; the claim then wins
    assert client.call("hitl.release", conversation_id=first["conversation_id"],
                       agent_id=alice) == {"conversation_id": first["conversation_id"],
                                           "claimed_by": []}
    assert client.call("hitl.claim", execution_id=eid, agent_id=alice)["outcome"] == "claimed"
    assert flow.wait_for(eid)["merge_field"] == {"addClaimedBy": alice}


def test_at_dispatch_an_agent_at_capacity_is_busy_not_available_alone(
        client, flow, team, capped):
    alice = capped(1)
    first, _ = start(client, team, flow)
    client.call("hitl.claim", execution_id=first["execution_id"], agent_id=alice)
    step, answer = start(client, team, flow)
    assert (answer["state"], answer["exit"]) == ("exited", "not_claimed")
    assert flow.wait_for(step["execution_id"])["merge_field"] == {"reason": "NOT_AVAILABLE"}
    notified = next(r for r in audit_trail(step["execution_id"]) if r.kind == "notified")
    assert notified.detail["skipped"] == {alice: "at_capacity"}


def test_at_dispatch_with_allow_busy_a_step_whose_agents_are_at_capacity_waits(
        client, flow, team, capped):
    alice, bob = capped(1), capped(None)
    first, _ = start(client, team, flow)
    client.call("hitl.claim", execution_id=first["execution_id"], agent_id=alice)
    client.call("hitl.remove_agent", agent_id=bob)
    # Only alice, at capacity: with allow_busy the step waits, offered to nobody yet
    step, answer = start(client, team, flow, allow_busy=True)
    assert answer["state"] == "waiting"
    notified = next(r for r in audit_trail(step["execution_id"]) if r.kind == "notified")
    assert (notified.detail["notified"], notified.detail["skipped"]) == (
        [], {alice: "at_capacity"})


def test_release_of_every_agent_and_of_unknown_ids(client, flow, team, capped, uid):
    alice, bob = capped(None), capped(None)
    conversation_id = uid("conv")
    for who in (alice, bob):
        step = request(team, flow.reply_to, conversation_id=conversation_id)
        client.call("hitl.request_assistance", **step)
        assert client.call("hitl.claim", execution_id=step["execution_id"],
                           agent_id=who)["outcome"] == "claimed"
    assert conversation(conversation_id).claimed_by == [alice, bob]
    # An agent that does not hold it: nothing changes
    assert client.call("hitl.release", conversation_id=conversation_id,
                       agent_id=uid("nobody")) == {"conversation_id": conversation_id,
                                                   "claimed_by": [alice, bob]}
    # Null: everyone
    assert client.call("hitl.release", conversation_id=conversation_id, agent_id=None) == {
        "conversation_id": conversation_id, "claimed_by": []}
    # An unknown conversation
    unknown = uid("no-conv")
    assert client.call("hitl.release", conversation_id=unknown, agent_id=alice) == {
        "conversation_id": unknown, "claimed_by": None}
    # Bad input: an answer, not a crash
    answer = client.call("hitl.release", conversation_id="a b")
    assert answer["claimed_by"] is None and answer["error"]["code"] == "invalid_request"


def test_two_claims_through_workers_racing_for_the_last_slot_one_wins(
        client, flow, team, capped, system):
    for _round in range(5):
        alice = capped(1)
        steps = [start(client, team, flow)[0]["execution_id"] for _ in range(2)]
        results = call_at_once(system.app, [("hitl.claim", {"execution_id": eid,
                                                            "agent_id": alice})
                                            for eid in steps])
        assert Counter(r["outcome"] for r in results) == {"claimed": 1, "at_capacity": 1}
        winner = steps[[r["outcome"] for r in results].index("claimed")]
        loser = steps[1 - steps.index(winner)]
        assert execution(loser).state == "waiting"
        assert flow.wait_for(winner)["merge_field"] == {"addClaimedBy": alice}
        client.call("hitl.cancel", execution_id=loser)
