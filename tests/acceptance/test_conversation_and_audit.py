"""The conversation's status and the audit trail, as the database holds them (README "What it
does"; docs/operations.md §2)."""

from __future__ import annotations

from tests.support.steps import audit_kinds, audit_trail, conversation, eventually, request


def test_a_claim_moves_the_conversation_to_claimed_with_the_winner(client, flow, agents, team):
    alice = agents()
    step = request(team, flow.reply_to)
    cid = step["conversation_id"]
    client.call("hitl.request_assistance", **step)
    row = conversation(cid)
    assert (row.status, row.tags, row.contact["name"]) == ("needs_action", [team],
                                                            "Ada Lovelace")
    client.call("hitl.claim", execution_id=step["execution_id"], agent_id=alice)
    row = conversation(cid)
    assert (row.status, row.claimed_by) == ("claimed", [alice])


def test_other_exits_restore_the_previous_status(client, flow, agents, team):
    alice, bob = agents(), agents()
    # open → needs_action → (reject) open
    first = request(team, flow.reply_to)
    cid = first["conversation_id"]
    client.call("hitl.request_assistance", **first)
    client.call("hitl.reject", execution_id=first["execution_id"], agent_id=alice)
    assert conversation(cid).status == "open"
    # open → needs_action → (claim) claimed
    second = request(team, flow.reply_to, conversation_id=cid)
    client.call("hitl.request_assistance", **second)
    client.call("hitl.claim", execution_id=second["execution_id"], agent_id=alice)
    assert conversation(cid).status == "claimed"
    # claimed → needs_action → (timeout) claimed again, claimed_by kept
    third = request(team, flow.reply_to, conversation_id=cid, timeout="1s")
    client.call("hitl.request_assistance", **third)
    assert conversation(cid).status == "needs_action"
    flow.wait_for(third["execution_id"], timeout=10)
    row = conversation(cid)
    assert (row.status, row.claimed_by) == ("claimed", [alice])
    # claimed → needs_action → (claim by Bob) claimed by both
    fourth = request(team, flow.reply_to, conversation_id=cid)
    client.call("hitl.request_assistance", **fourth)
    client.call("hitl.claim", execution_id=fourth["execution_id"], agent_id=bob)
    assert conversation(cid).claimed_by == [alice, bob]


def test_a_request_without_conversation_keeps_the_stored_tags(client, flow, agents, team):
    alice = agents()
    first = request(team, flow.reply_to)
    client.call("hitl.request_assistance", **first)
    client.call("hitl.reject", execution_id=first["execution_id"], agent_id=alice)
    second = request(team, flow.reply_to, conversation_id=first["conversation_id"])
    del second["conversation"]
    assert client.call("hitl.request_assistance", **second)["state"] == "waiting"
    assert conversation(first["conversation_id"]).tags == [team]


def test_the_audit_trail_of_a_claimed_step(client, flow, agents, team):
    alice, bob = agents(), agents()
    outsider = agents(groups=[[f"{team}-other"]])
    step = request(team, flow.reply_to)
    eid = step["execution_id"]
    client.call("hitl.request_assistance", **step)
    client.call("hitl.close", execution_id=eid, agent_id=bob)
    client.call("hitl.claim", execution_id=eid, agent_id=alice)
    client.call("hitl.claim", execution_id=eid, agent_id=bob)
    flow.wait_for(eid)
    expected = ["requested", "notified", "popup_closed", "claimed", "exit_recorded",
                "claim_lost", "exit_delivered"]
    assert eventually(lambda: sorted(audit_kinds(eid)) == sorted(expected))
    kinds = audit_kinds(eid)
    # The order of everything but the delivery (which races the loser's claim) is fixed
    assert [k for k in kinds if k != "exit_delivered"] == [
        k for k in expected if k != "exit_delivered"]
    assert kinds.index("exit_delivered") > kinds.index("exit_recorded")
    trail = {e.kind: e for e in audit_trail(eid)}
    assert sorted(trail["notified"].detail["notified"]) == sorted([alice, bob])
    # The outsider cannot see the conversation: not listed, counted among "others"
    assert outsider not in trail["notified"].detail["skipped"]
    assert trail["notified"].detail["others"] == "not_eligible"
    assert trail["popup_closed"].agent_id == bob
    assert trail["claimed"].agent_id == alice
    assert trail["claim_lost"].agent_id == bob
    assert trail["exit_recorded"].detail == {"exit": "claimed",
                                             "merge_field": {"addClaimedBy": alice}}


def test_the_audit_trail_of_refusals_rejects_timers_and_cancels(client, flow, agents, team):
    alice, bob = agents(), agents(status="busy")
    agents()  # a second notified agent, who never answers
    step = request(team, flow.reply_to, reject_policy="all", timeout="1s")
    eid = step["execution_id"]
    client.call("hitl.request_assistance", **step)
    client.call("hitl.claim", execution_id=eid, agent_id=bob)
    client.call("hitl.reject", execution_id=eid, agent_id=alice)
    flow.wait_for(eid, timeout=10)
    assert eventually(lambda: "exit_delivered" in audit_kinds(eid))
    assert audit_kinds(eid) == ["requested", "notified", "claim_refused", "rejected",
                                "timeout_fired", "exit_recorded", "exit_delivered"]
    refused = next(e for e in audit_trail(eid) if e.kind == "claim_refused")
    assert (refused.agent_id, refused.detail["reason"]) == (bob, "status_not_allowed:busy")

    cancelled = request(team, flow.reply_to)
    client.call("hitl.request_assistance", **cancelled)
    client.call("hitl.cancel", execution_id=cancelled["execution_id"], reason="left")
    assert audit_kinds(cancelled["execution_id"]) == ["requested", "notified", "cancelled"]
    assert audit_trail(cancelled["execution_id"])[-1].detail == {"reason": "left"}


def test_hitl_workers_show_tells_a_claimed_steps_story(client, flow, agents, team):
    from click.testing import CliRunner

    from hitl_workers.cli import main

    alice = agents()
    step = request(team, flow.reply_to)
    client.call("hitl.request_assistance", **step)
    client.call("hitl.claim", execution_id=step["execution_id"], agent_id=alice)
    eventually(lambda: "exit_delivered" in audit_kinds(step["execution_id"]))

    text = CliRunner().invoke(main, ["show", step["execution_id"]])
    assert text.exit_code == 0, text.output
    assert f'exit claimed {{"addClaimedBy": "{alice}"}}' in text.output
    assert f"  {alice}" in text.output  # its offer
    assert "exit delivered to" in text.output
    assert f"notified 1: {alice}; every other agent: cannot see the conversation" \
        in text.output  # the audit's "others": dispatch names no one else
    as_json = CliRunner().invoke(main, ["show", "--json", step["execution_id"]])
    assert '"state": "exited"' in as_json.output
    missing = CliRunner().invoke(main, ["show", "no-such-execution"])
    assert missing.exit_code == 1 and "no execution 'no-such-execution'" in missing.output
