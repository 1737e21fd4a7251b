"""Close dismisses a popup; cancel gives the step up (docs/contract.md §3, §4)."""

from __future__ import annotations

from tests.support.steps import conversation, execution, outbox_rows, request, stays


def test_close_dismisses_the_popup_and_changes_nothing_else(client, flow, agents, team,
                                                            streams):
    alice, bob = agents(), agents()
    step = request(team, flow.reply_to, popup={"text": "hi"})
    eid = step["execution_id"]
    client.call("hitl.request_assistance", **step)
    closed = client.call("hitl.close", execution_id=eid, agent_id=alice)
    assert closed == {"outcome": "closed", "execution_id": eid, "state": "waiting",
                      "exit": None, "merge_field": None}
    assert execution(eid).state == "waiting"
    assert conversation(step["conversation_id"]).status == "needs_action"
    assert outbox_rows(eid, "exit") == []
    assert [e["type"] for e in streams.events(bob)] == ["assistance.requested"]
    # Alice may still change her mind, and closing twice is still just a close
    assert client.call("hitl.close", execution_id=eid, agent_id=alice)["outcome"] == "closed"
    assert client.call("hitl.claim", execution_id=eid, agent_id=alice)["outcome"] == "claimed"
    assert flow.wait_for(eid)["merge_field"] == {"addClaimedBy": alice}
    # A close after the end answers already_resolved, with how it ended
    late = client.call("hitl.close", execution_id=eid, agent_id=bob)
    assert late == {"outcome": "already_resolved", "execution_id": eid, "state": "exited",
                    "exit": "claimed", "merge_field": {"addClaimedBy": alice}}
    assert flow.count_for(eid) == 1


def test_close_under_reject_policy_all_is_not_a_reject(client, flow, agents, team):
    alice, bob = agents(), agents()
    step = request(team, flow.reply_to, reject_policy="all")
    eid = step["execution_id"]
    client.call("hitl.request_assistance", **step)
    assert client.call("hitl.close", execution_id=eid, agent_id=alice)["outcome"] == "closed"
    assert client.call("hitl.reject", execution_id=eid,
                       agent_id=bob)["outcome"] == "reject_recorded"
    # Bob's close after his reject keeps the reject
    assert client.call("hitl.close", execution_id=eid, agent_id=bob)["outcome"] == "closed"
    assert client.call("hitl.reject", execution_id=eid, agent_id=alice)["outcome"] == "rejected"
    assert flow.wait_for(eid)["merge_field"] == {"reason": "REJECTED",
                                                 "rejectedBy": [bob, alice]}


def test_cancel_withdraws_the_offers_and_never_sends_an_exit(client, flow, agents, team,
                                                             streams):
    alice, bob = agents(), agents()
    step = request(team, flow.reply_to, timeout="1s",
                   popup={"text": "x", "timer": {"auto_action_timeout": "1s"}})
    eid = step["execution_id"]
    client.call("hitl.request_assistance", **step)
    assert conversation(step["conversation_id"]).status == "needs_action"
    cancelled = client.call("hitl.cancel", execution_id=eid, reason="the customer left")
    assert cancelled == {"outcome": "cancelled", "execution_id": eid, "state": "cancelled",
                         "exit": None, "merge_field": None}
    for agent in (alice, bob):
        withdrawn = streams.events(agent)[-1]
        assert withdrawn["type"] == "assistance.withdrawn"
        assert (withdrawn["execution_id"], withdrawn["state"], withdrawn["exit"],
                withdrawn["claimed_by"]) == (eid, "cancelled", None, None)
    row = execution(eid)
    assert (row.state, row.exit) == ("cancelled", None)
    assert conversation(step["conversation_id"]).status == "open"
    # Past both deadlines: no exit, ever
    assert stays(lambda: flow.count_for(eid) == 0, seconds=1.5)
    assert outbox_rows(eid, "exit") == []
    # Everything after answers already_resolved
    again = client.call("hitl.cancel", execution_id=eid)
    assert (again["outcome"], again["state"], again["exit"]) == (
        "already_resolved", "cancelled", None)
    late = client.call("hitl.claim", execution_id=eid, agent_id=alice)
    assert (late["outcome"], late["state"]) == ("already_resolved", "cancelled")


def test_cancel_after_the_exit_is_already_resolved(client, flow, agents, team):
    alice = agents()
    step = request(team, flow.reply_to)
    client.call("hitl.request_assistance", **step)
    client.call("hitl.claim", execution_id=step["execution_id"], agent_id=alice)
    answer = client.call("hitl.cancel", execution_id=step["execution_id"])
    assert answer == {"outcome": "already_resolved", "execution_id": step["execution_id"],
                      "state": "exited", "exit": "claimed",
                      "merge_field": {"addClaimedBy": alice}}


def test_cancel_of_an_unknown_execution_is_not_found(client):
    answer = client.call("hitl.cancel", execution_id="exec-nobody-ever-sent")
    assert answer == {"outcome": "not_found", "execution_id": "exec-nobody-ever-sent",
                      "state": None, "exit": None, "merge_field": None}
