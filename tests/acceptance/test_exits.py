"""Every exit of the step, through real worker processes (docs/contract.md §1-§4)."""

from __future__ import annotations

from datetime import datetime

from tests.support.steps import (
    audit_trail,
    eventually,
    execution,
    outbox_rows,
    request,
    stays,
)


def test_claim_exits_claimed_with_the_winner_in_the_merge_field(client, flow, agents, team,
                                                                streams):
    # Given two available agents of the team
    alice, bob = agents(), agents()
    step = request(team, flow.reply_to, popup={"text": "**VIP**"})
    # When a step is requested and Alice claims it
    started = client.call("hitl.request_assistance", **step)
    assert started == {"execution_id": step["execution_id"], "state": "waiting", "exit": None,
                       "duplicate": False}
    result = client.call("hitl.claim", execution_id=step["execution_id"], agent_id=alice)
    # Then the step exits claimed, once, naming Alice
    assert result["outcome"] == "claimed"
    assert result["merge_field"] == {"addClaimedBy": alice}
    exit_message = flow.wait_for(step["execution_id"])
    assert exit_message["exit"] == "claimed"
    assert exit_message["merge_field"] == {"addClaimedBy": alice}
    assert exit_message["conversation_id"] == step["conversation_id"]
    # And both agents were offered it, and told when it was gone
    for agent in (alice, bob):
        kinds = [e["type"] for e in streams.events(agent)]
        assert kinds == ["assistance.requested", "assistance.withdrawn"]
    assert streams.events(bob)[1]["claimed_by"] == alice
    assert "<strong>VIP</strong>" in streams.events(bob)[0]["popup"]["html"]


def test_the_exit_message_carries_the_contract_fields(client, flow, agents, team):
    alice = agents()
    step = request(team, flow.reply_to)
    client.call("hitl.request_assistance", **step)
    result = client.call("hitl.claim", execution_id=step["execution_id"], agent_id=alice)
    assert result == {"outcome": "claimed", "execution_id": step["execution_id"],
                      "state": "exited", "exit": "claimed",
                      "merge_field": {"addClaimedBy": alice}}
    message = flow.wait_for(step["execution_id"])
    assert message["_task"] == flow.task
    exited_at = datetime.fromisoformat(message.pop("exited_at"))
    assert exited_at.utcoffset() is not None and exited_at.utcoffset().total_seconds() == 0
    assert {k: v for k, v in message.items() if not k.startswith("_")} == {
        "execution_id": step["execution_id"], "conversation_id": step["conversation_id"],
        "flow_id": "flow-1", "step_id": "step-1", "exit": "claimed",
        "merge_field": {"addClaimedBy": alice}}


# --- not_claimed / NO_AGENTS ----------------------------------------------------------------

def test_no_agent_sees_the_conversation_exits_no_agents(client, flow, team):
    step = request(team, flow.reply_to)
    result = client.call("hitl.request_assistance", **step)
    assert result["state"] == "exited" and result["exit"] == "not_claimed"
    assert flow.wait_for(step["execution_id"])["merge_field"] == {"reason": "NO_AGENTS"}


def test_agents_of_other_teams_only_exits_no_agents_and_says_why(client, flow, agents, team):
    # Given an available agent who only sees another team's conversations
    outsider = agents(groups=[[f"{team}-other"]])
    step = request(team, flow.reply_to)
    result = client.call("hitl.request_assistance", **step)
    assert (result["state"], result["exit"]) == ("exited", "not_claimed")
    assert flow.wait_for(step["execution_id"])["merge_field"] == {"reason": "NO_AGENTS"}
    # And the audit trail says why the outsider was not notified
    notified = next(e for e in audit_trail(step["execution_id"]) if e.kind == "notified")
    assert notified.detail["notified"] == []
    # (agents who cannot see the conversation are not listed one by one: "others" says why)
    assert outsider not in notified.detail["skipped"]
    assert notified.detail["others"] == "not_eligible"


def test_an_unknown_specific_agent_exits_no_agents(client, flow, agents, team):
    agents()  # someone else could take it, but the step names one agent only
    step = request(team, flow.reply_to, specific_agent_id="agent-who-does-not-exist")
    result = client.call("hitl.request_assistance", **step)
    assert (result["state"], result["exit"]) == ("exited", "not_claimed")
    assert flow.wait_for(step["execution_id"])["merge_field"] == {"reason": "NO_AGENTS"}


def test_a_specific_agent_who_cannot_see_the_conversation_exits_no_agents(client, flow, agents,
                                                                          team):
    agents()
    blind = agents(groups=[[f"{team}-elsewhere"]])
    step = request(team, flow.reply_to, specific_agent_id=blind)
    client.call("hitl.request_assistance", **step)
    assert flow.wait_for(step["execution_id"])["merge_field"] == {"reason": "NO_AGENTS"}


# --- not_claimed / NOT_AVAILABLE ------------------------------------------------------------

def test_eligible_agents_all_busy_or_offline_exits_not_available(client, flow, agents, team,
                                                                 streams):
    busy, offline = agents(status="busy"), agents(status="offline")
    step = request(team, flow.reply_to)
    result = client.call("hitl.request_assistance", **step)
    assert (result["state"], result["exit"]) == ("exited", "not_claimed")
    assert flow.wait_for(step["execution_id"])["merge_field"] == {"reason": "NOT_AVAILABLE"}
    notified = next(e for e in audit_trail(step["execution_id"]) if e.kind == "notified")
    skipped = notified.detail["skipped"]
    assert {a: skipped[a] for a in (busy, offline)} == {busy: "status_not_allowed:busy",
                                                        offline: "status_not_allowed:offline"}
    # Agents of other tests share the directory: they cannot see it, and are not listed.
    assert set(skipped) == {busy, offline}
    assert notified.detail["others"] == "not_eligible"
    assert streams.events(busy) == [] and streams.events(offline) == []


def test_a_busy_specific_agent_exits_not_available(client, flow, agents, team, streams):
    free = agents()
    busy = agents(status="busy")
    step = request(team, flow.reply_to, specific_agent_id=busy)
    client.call("hitl.request_assistance", **step)
    assert flow.wait_for(step["execution_id"])["merge_field"] == {"reason": "NOT_AVAILABLE"}
    assert streams.events(free) == []


# --- not_claimed / REJECTED -----------------------------------------------------------------

def test_reject_policy_any_the_first_reject_ends_the_step(client, flow, agents, team, streams):
    alice, bob = agents(), agents()
    step = request(team, flow.reply_to, reject_policy="any")
    client.call("hitl.request_assistance", **step)
    result = client.call("hitl.reject", execution_id=step["execution_id"], agent_id=bob)
    assert result == {"outcome": "rejected", "execution_id": step["execution_id"],
                      "state": "exited", "exit": "not_claimed",
                      "merge_field": {"reason": "REJECTED", "rejectedBy": [bob]}}
    message = flow.wait_for(step["execution_id"])
    assert (message["exit"], message["merge_field"]) == (
        "not_claimed", {"reason": "REJECTED", "rejectedBy": [bob]})
    # Alice comes too late
    late = client.call("hitl.claim", execution_id=step["execution_id"], agent_id=alice)
    assert (late["outcome"], late["state"], late["exit"]) == (
        "already_resolved", "exited", "not_claimed")
    assert streams.events(alice)[-1]["type"] == "assistance.withdrawn"
    assert streams.events(alice)[-1]["exit"] == "not_claimed"


def test_reject_policy_all_waits_for_every_notified_agent(client, flow, agents, team):
    alice, bob, carol = agents(), agents(), agents()
    step = request(team, flow.reply_to, reject_policy="all")
    eid = step["execution_id"]
    client.call("hitl.request_assistance", **step)

    def reject(agent):
        return client.call("hitl.reject", execution_id=eid, agent_id=agent)

    first = reject(alice)
    assert first == {"outcome": "reject_recorded", "execution_id": eid, "state": "waiting",
                     "exit": None, "merge_field": None}
    assert reject(bob)["outcome"] == "reject_recorded"
    # A repeated reject counts once: Alice again does not complete the set
    assert reject(alice)["outcome"] == "reject_recorded"
    assert flow.count_for(eid) == 0
    assert execution(eid).state == "waiting"
    last = reject(carol)
    merge_field = {"reason": "REJECTED", "rejectedBy": [alice, bob, carol]}
    assert (last["outcome"], last["exit"], last["merge_field"]) == (
        "rejected", "not_claimed", merge_field)
    assert flow.wait_for(eid)["merge_field"] == merge_field
    assert reject(alice)["outcome"] == "already_resolved"
    assert flow.count_for(eid) == 1


def test_reject_policy_all_a_claim_still_wins_after_some_rejects(client, flow, agents, team):
    alice, bob = agents(), agents()
    step = request(team, flow.reply_to, reject_policy="all")
    client.call("hitl.request_assistance", **step)
    assert client.call("hitl.reject", execution_id=step["execution_id"],
                       agent_id=alice)["outcome"] == "reject_recorded"
    assert client.call("hitl.claim", execution_id=step["execution_id"],
                       agent_id=bob)["outcome"] == "claimed"
    assert flow.wait_for(step["execution_id"])["exit"] == "claimed"


# --- timer_action / timeout -----------------------------------------------------------------

def test_the_countdown_first_exits_timer_action_and_the_timeout_never_fires(client, flow, agents,
                                                                            team):
    agents()
    step = request(team, flow.reply_to, timeout="2s",
                   popup={"text": "hurry", "timer": {"auto_action_timeout": "1s"}})
    eid = step["execution_id"]
    client.call("hitl.request_assistance", **step)
    message = flow.wait_for(eid, timeout=10)
    assert (message["exit"], message["merge_field"]) == ("timer_action", {})
    row = execution(eid)
    assert (row.state, row.exit) == ("exited", "timer_action")
    # Past the step timeout too: still exactly one exit
    assert stays(lambda: flow.count_for(eid) == 1, seconds=1.5)
    assert len(outbox_rows(eid, "exit")) == 1
    kinds = [e.kind for e in audit_trail(eid)]
    assert "timer_fired" in kinds and "timeout_fired" not in kinds


def test_the_timeout_first_exits_timeout(client, flow, agents, team):
    agents()
    step = request(team, flow.reply_to, timeout="1s",
                   popup={"text": "slow", "timer": {"auto_action_timeout": "2s"}})
    eid = step["execution_id"]
    client.call("hitl.request_assistance", **step)
    message = flow.wait_for(eid, timeout=10)
    assert (message["exit"], message["merge_field"]) == ("timeout", {})
    assert stays(lambda: flow.count_for(eid) == 1, seconds=1.5)
    kinds = [e.kind for e in audit_trail(eid)]
    assert "timeout_fired" in kinds and "timer_fired" not in kinds


def test_timeout_exit(client, flow, agents, team):
    agents()
    step = request(team, flow.reply_to, timeout="1s")
    client.call("hitl.request_assistance", **step)
    assert flow.wait_for(step["execution_id"], timeout=10)["exit"] == "timeout"


# --- error ----------------------------------------------------------------------------------

def test_an_invalid_request_exits_error_naming_each_bad_field(client, flow, team):
    step = request(team, flow.reply_to, timeout="5 parsecs", allow_busy="yes",
                   popup={"text": "x", "additional_timers": [
                       {"label": "ok", "since": 1}, {"label": "", "since": 2}]})
    result = client.call("hitl.request_assistance", **step)
    assert result == {"execution_id": step["execution_id"], "state": "failed", "exit": "error",
                      "duplicate": False}
    message = flow.wait_for(step["execution_id"])
    assert message["exit"] == "error"
    error = message["merge_field"]["error"]
    assert error["code"] == "invalid_request"
    assert sorted(error["fields"]) == sorted(
        ["settings.timeout", "settings.allow_busy", "settings.popup.additional_timers.1.label"])
    for field in error["fields"]:
        assert field in error["message"]
    row = execution(step["execution_id"])
    assert (row.state, row.exit) == ("failed", "error")


def test_an_unknown_setting_is_refused_not_ignored(client, flow, team):
    step = request(team, flow.reply_to, alow_busy=True)
    client.call("hitl.request_assistance", **step)
    error = flow.wait_for(step["execution_id"])["merge_field"]["error"]
    assert (error["code"], error["fields"]) == ("invalid_request", ["settings.alow_busy"])


def test_a_second_execution_on_a_waiting_conversation_exits_conversation_busy(client, flow,
                                                                              agents, team):
    agents()
    first = request(team, flow.reply_to)
    second = request(team, flow.reply_to, conversation_id=first["conversation_id"])
    assert client.call("hitl.request_assistance", **first)["state"] == "waiting"
    result = client.call("hitl.request_assistance", **second)
    assert (result["state"], result["exit"]) == ("failed", "error")
    error = flow.wait_for(second["execution_id"])["merge_field"]["error"]
    assert error["code"] == "conversation_busy"
    assert first["execution_id"] in error["message"]
    # The first execution is untouched and still waiting
    assert execution(first["execution_id"]).state == "waiting"
    assert flow.count_for(first["execution_id"]) == 0


# --- a flow engine that takes its answer from the exit alone ----------------------------------

def test_a_request_sent_with_ignore_result_exits_as_usual_and_stores_no_result(
        flow, agents, team, system):
    # Given a flow engine that never reads the request's result (docs/contract.md §1)
    alice = agents()
    step = request(team, flow.reply_to)
    sent = system.app.send_task("hitl.request_assistance", kwargs=step, ignore_result=True)
    # When the step is dispatched and Alice claims it
    assert eventually(lambda: getattr(execution(step["execution_id"]), "state", None)
                      == "waiting")
    claim = system.app.send_task("hitl.claim", kwargs={
        "execution_id": step["execution_id"], "agent_id": alice})
    assert claim.get(timeout=30)["outcome"] == "claimed"
    # Then the exit reaches the flow engine once, as for any request
    assert flow.wait_for(step["execution_id"])["exit"] == "claimed"
    assert stays(lambda: flow.count_for(step["execution_id"]) == 1, seconds=1.0)
    # And the worker stored no result for the request; the claim's, sent as usual, is there
    backend = system.app.backend
    assert backend.get(backend.get_key_for_task(sent.id)) is None
    assert backend.get(backend.get_key_for_task(claim.id)) is not None
