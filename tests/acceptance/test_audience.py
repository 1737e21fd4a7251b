"""Who is offered the conversation, and who may claim it (docs/contract.md §1, §3, §6)."""

from __future__ import annotations

from tests.support.steps import execution, request


def test_fan_out_notifies_every_eligible_agent_and_nobody_else(client, flow, agents, team,
                                                               streams):
    alice, bob = agents(), agents()
    outsider = agents(groups=[[f"{team}-other"]])
    busy = agents(status="busy")
    step = request(team, flow.reply_to, browser_notification=True,
                   popup={"text": "hi", "buttons": {"close": {"enabled": False}},
                          "timer": {}, "display_for": "30s",
                          "additional_timers": [{"label": "In queue", "since": 1764000000}]})
    client.call("hitl.request_assistance", **step)
    for agent in (alice, bob):
        (event,) = streams.events(agent)
        assert event["type"] == "assistance.requested"
        assert event["execution_id"] == step["execution_id"]
        assert event["conversation_id"] == step["conversation_id"]
        assert event["contact"] == {"id": "contact-1", "name": "Ada Lovelace"}
        assert event["browser_notification"] is True
        popup = event["popup"]
        assert popup["buttons"] == [{"action": "claim", "label": "Claim"},
                                    {"action": "reject", "label": "Reject"}]
        assert popup["timers"] == [{"label": "In queue", "since_ms": 1764000000000}]
        # Deadlines run from dispatch: the countdown (10 s by default) ends before the popup
        # is taken down (30 s)
        row = execution(step["execution_id"])
        assert popup["countdown_until_ms"] == int(row.countdown_at.timestamp() * 1000)
        assert popup["display_until_ms"] - popup["countdown_until_ms"] == 20_000
    assert streams.events(outsider) == [] and streams.events(busy) == []


def test_a_specific_agent_alone_gets_the_notification(client, flow, agents, team, streams):
    alice, bob, carol = agents(), agents(), agents()
    step = request(team, flow.reply_to, specific_agent_id=bob)
    assert client.call("hitl.request_assistance", **step)["state"] == "waiting"
    assert [e["type"] for e in streams.events(bob)] == ["assistance.requested"]
    assert streams.events(alice) == [] and streams.events(carol) == []
    # Only Bob may claim it
    refused = client.call("hitl.claim", execution_id=step["execution_id"], agent_id=alice)
    assert (refused["outcome"], refused["state"]) == ("not_eligible", "waiting")
    assert client.call("hitl.claim", execution_id=step["execution_id"],
                       agent_id=bob)["outcome"] == "claimed"
    assert flow.wait_for(step["execution_id"])["merge_field"] == {"addClaimedBy": bob}
    assert streams.events(alice) == []


def test_a_busy_agent_may_not_claim_unless_busy_is_allowed(client, flow, agents, team, streams):
    free, busy = agents(), agents(status="busy")
    step = request(team, flow.reply_to)
    client.call("hitl.request_assistance", **step)
    assert streams.events(busy) == []
    refused = client.call("hitl.claim", execution_id=step["execution_id"], agent_id=busy)
    assert refused["outcome"] == "not_eligible"
    assert execution(step["execution_id"]).state == "waiting"
    assert client.call("hitl.claim", execution_id=step["execution_id"],
                       agent_id=free)["outcome"] == "claimed"


def test_with_allow_busy_a_busy_agent_is_offered_it_and_may_claim(client, flow, agents, team,
                                                                  streams):
    busy = agents(status="busy")
    offline = agents(status="offline")
    step = request(team, flow.reply_to, allow_busy=True)
    assert client.call("hitl.request_assistance", **step)["state"] == "waiting"
    assert [e["type"] for e in streams.events(busy)] == ["assistance.requested"]
    assert streams.events(offline) == []
    assert client.call("hitl.claim", execution_id=step["execution_id"],
                       agent_id=offline)["outcome"] == "not_eligible"
    assert client.call("hitl.claim", execution_id=step["execution_id"],
                       agent_id=busy)["outcome"] == "claimed"
    assert flow.wait_for(step["execution_id"])["merge_field"] == {"addClaimedBy": busy}


def test_with_allow_offline_an_offline_agent_may_claim(client, flow, agents, team):
    offline = agents(status="offline")
    step = request(team, flow.reply_to, allow_offline=True)
    assert client.call("hitl.request_assistance", **step)["state"] == "waiting"
    assert client.call("hitl.claim", execution_id=step["execution_id"],
                       agent_id=offline)["outcome"] == "claimed"


def test_with_busy_and_offline_allowed_and_everyone_offline_the_step_waits_for_its_timeout(
        client, flow, agents, team, streams):
    agents(status="offline"), agents(status="offline")
    step = request(team, flow.reply_to, allow_busy=True, allow_offline=True, timeout="1s")
    result = client.call("hitl.request_assistance", **step)
    assert (result["state"], result["exit"]) == ("waiting", None)
    assert flow.wait_for(step["execution_id"], timeout=10)["exit"] == "timeout"


def test_the_claim_rule_uses_the_agent_status_now_not_at_dispatch(client, flow, agents, team):
    alice = agents()
    step = request(team, flow.reply_to)
    client.call("hitl.request_assistance", **step)
    client.call("hitl.set_agent_status", agent_id=alice, status="busy")
    assert client.call("hitl.claim", execution_id=step["execution_id"],
                       agent_id=alice)["outcome"] == "not_eligible"
    client.call("hitl.set_agent_status", agent_id=alice, status="available")
    assert client.call("hitl.claim", execution_id=step["execution_id"],
                       agent_id=alice)["outcome"] == "claimed"


def test_an_agent_outside_the_team_may_not_claim_reject_or_close(client, flow, agents, team):
    agents()
    outsider = agents(groups=[[f"{team}-other"]])
    step = request(team, flow.reply_to)
    client.call("hitl.request_assistance", **step)
    for action in ("hitl.claim", "hitl.reject", "hitl.close"):
        answer = client.call(action, execution_id=step["execution_id"], agent_id=outsider)
        assert answer == {"outcome": "not_eligible", "execution_id": step["execution_id"],
                          "state": "waiting", "exit": None, "merge_field": None}, action
    assert execution(step["execution_id"]).state == "waiting"
