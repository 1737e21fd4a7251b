"""Idempotent repeats: of a request, of a claim, of a client event id (docs/contract.md §1, §3)."""

from __future__ import annotations

from tests.support.steps import audit_kinds, outbox_rows, request, stays


def test_the_same_request_twice_is_one_execution_one_round_one_exit(client, flow, agents, team,
                                                                    streams):
    alice, bob = agents(), agents()
    step = request(team, flow.reply_to)
    eid = step["execution_id"]
    first = client.call("hitl.request_assistance", **step)
    second = client.call("hitl.request_assistance", **step)
    assert first == {"execution_id": eid, "state": "waiting", "exit": None, "duplicate": False}
    assert second == {"execution_id": eid, "state": "waiting", "exit": None, "duplicate": True}
    for agent in (alice, bob):
        assert [e["type"] for e in streams.events(agent)] == ["assistance.requested"]
    client.call("hitl.claim", execution_id=eid, agent_id=alice)
    # A retry after the exit says how it ended, and sends nothing new
    third = client.call("hitl.request_assistance", **step)
    assert third == {"execution_id": eid, "state": "exited", "exit": "claimed",
                     "duplicate": True}
    flow.wait_for(eid)
    assert stays(lambda: flow.count_for(eid) == 1, seconds=1.0)
    assert len(outbox_rows(eid, "exit")) == 1
    assert audit_kinds(eid).count("requested") == 1
    for agent in (alice, bob):
        assert [e["type"] for e in streams.events(agent)] == ["assistance.requested",
                                                              "assistance.withdrawn"]


def test_a_retried_invalid_request_gets_one_error_exit(client, flow, team):
    step = request(team, flow.reply_to, timeout="-1s")
    first = client.call("hitl.request_assistance", **step)
    second = client.call("hitl.request_assistance", **step)
    assert (first["duplicate"], second["duplicate"]) == (False, True)
    assert second["state"] == "failed" and second["exit"] == "error"
    flow.wait_for(step["execution_id"])
    assert stays(lambda: flow.count_for(step["execution_id"]) == 1, seconds=1.0)


def test_the_same_claim_event_id_twice_returns_the_first_answer_verbatim(client, flow, agents,
                                                                         team):
    alice = agents(status="busy")
    agents()
    step = request(team, flow.reply_to)
    eid = step["execution_id"]
    client.call("hitl.request_assistance", **step)
    # Alice, busy, is refused; event e-1 is answered once and for all
    first = client.call("hitl.claim", execution_id=eid, agent_id=alice, event_id="e-1")
    assert first["outcome"] == "not_eligible"
    client.call("hitl.set_agent_status", agent_id=alice, status="available")
    assert client.call("hitl.claim", execution_id=eid, agent_id=alice, event_id="e-1") == first
    # A new event from her is a new claim, and wins
    won = client.call("hitl.claim", execution_id=eid, agent_id=alice, event_id="e-2")
    assert won["outcome"] == "claimed"
    assert client.call("hitl.claim", execution_id=eid, agent_id=alice, event_id="e-2") == won
    assert flow.wait_for(eid)["merge_field"] == {"addClaimedBy": alice}
    assert client.call("hitl.claim", execution_id=eid, agent_id=alice, event_id="e-1") == first


def test_event_ids_are_per_agent(client, flow, agents, team):
    alice, bob = agents(), agents()
    step = request(team, flow.reply_to)
    client.call("hitl.request_assistance", **step)
    assert client.call("hitl.close", execution_id=step["execution_id"], agent_id=alice,
                       event_id="same")["outcome"] == "closed"
    assert client.call("hitl.claim", execution_id=step["execution_id"], agent_id=bob,
                       event_id="same")["outcome"] == "claimed"


def test_after_a_claim_the_winner_hears_already_claimed_and_the_others_already_resolved(
        client, flow, agents, team):
    alice, bob = agents(), agents()
    step = request(team, flow.reply_to)
    eid = step["execution_id"]
    client.call("hitl.request_assistance", **step)
    assert client.call("hitl.claim", execution_id=eid, agent_id=alice)["outcome"] == "claimed"
    merge_field = {"addClaimedBy": alice}
    assert client.call("hitl.claim", execution_id=eid, agent_id=alice) == {
        "outcome": "already_claimed", "execution_id": eid, "state": "exited",
        "exit": "claimed", "merge_field": merge_field}
    for action in ("hitl.claim", "hitl.reject", "hitl.close"):
        assert client.call(action, execution_id=eid, agent_id=bob) == {
            "outcome": "already_resolved", "execution_id": eid, "state": "exited",
            "exit": "claimed", "merge_field": merge_field}, action
    # The winner's reject after the claim does not undo it
    assert client.call("hitl.reject", execution_id=eid,
                       agent_id=alice)["outcome"] == "already_resolved"
    flow.wait_for(eid)
    assert stays(lambda: flow.count_for(eid) == 1, seconds=0.5)


def test_claim_by_conversation_id(client, flow, agents, team):
    alice = agents()
    step = request(team, flow.reply_to)
    cid = step["conversation_id"]
    client.call("hitl.request_assistance", **step)
    won = client.call("hitl.claim", conversation_id=cid, agent_id=alice)
    assert won == {"outcome": "claimed", "execution_id": step["execution_id"],
                   "state": "exited", "exit": "claimed", "merge_field": {"addClaimedBy": alice}}
    assert flow.wait_for(step["execution_id"])["exit"] == "claimed"
    # Nothing waits on the conversation any more
    assert client.call("hitl.claim", conversation_id=cid, agent_id=alice) == {
        "outcome": "not_found", "execution_id": None, "state": None, "exit": None,
        "merge_field": None}


def test_claim_by_an_unknown_conversation_or_execution_is_not_found(client, agents):
    alice = agents()
    assert client.call("hitl.claim", conversation_id="conv-never-seen",
                       agent_id=alice)["outcome"] == "not_found"
    assert client.call("hitl.claim", execution_id="exec-never-seen", agent_id=alice) == {
        "outcome": "not_found", "execution_id": "exec-never-seen", "state": None,
        "exit": None, "merge_field": None}


def test_a_new_execution_for_a_conversation_after_the_last_one_exited(client, flow, agents,
                                                                      team):
    alice = agents()
    first = request(team, flow.reply_to)
    client.call("hitl.request_assistance", **first)
    client.call("hitl.reject", execution_id=first["execution_id"], agent_id=alice)
    second = request(team, flow.reply_to, conversation_id=first["conversation_id"])
    assert client.call("hitl.request_assistance", **second)["state"] == "waiting"
    won = client.call("hitl.claim", conversation_id=first["conversation_id"], agent_id=alice)
    assert (won["outcome"], won["execution_id"]) == ("claimed", second["execution_id"])
