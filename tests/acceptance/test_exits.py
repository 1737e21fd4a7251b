"""Every exit of the step, through real worker processes (CONTRACT.md §1-§4)."""

from __future__ import annotations

from tests.acceptance.steps import request


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


def test_no_agent_sees_the_conversation_exits_no_agents(client, flow, team):
    step = request(team, flow.reply_to)
    result = client.call("hitl.request_assistance", **step)
    assert result["state"] == "exited" and result["exit"] == "not_claimed"
    assert flow.wait_for(step["execution_id"])["merge_field"] == {"reason": "NO_AGENTS"}


def test_timeout_exit(client, flow, agents, team):
    agents()
    step = request(team, flow.reply_to, timeout="1s")
    client.call("hitl.request_assistance", **step)
    assert flow.wait_for(step["execution_id"], timeout=10)["exit"] == "timeout"
