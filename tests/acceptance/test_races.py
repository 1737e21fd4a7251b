"""Races through real worker processes: the database decides, exactly one exit (README "How it
is built").

The worker runs 6 pool processes, so the claims below really do run at the same moment in
different processes, each with its own database connection.
"""

from __future__ import annotations

import time
from collections import Counter

from tests.support.steps import (
    audit_kinds,
    call_at_once,
    conversation,
    execution,
    outbox_rows,
    request,
    stays,
)

AGENTS = 20


def test_twenty_agents_claiming_at_once_make_exactly_one_winner(client, flow, agents, team,
                                                                system):
    # Given 20 available agents, all offered the conversation
    crowd = [agents() for _ in range(AGENTS)]
    step = request(team, flow.reply_to)
    eid = step["execution_id"]
    assert client.call("hitl.request_assistance", **step)["state"] == "waiting"
    # When all 20 claim at the same moment
    results = call_at_once(system.app, [("hitl.claim", {"execution_id": eid, "agent_id": a})
                                        for a in crowd])
    # Then exactly one wins and the 19 others are told it is resolved, and by whom
    outcomes = Counter(r["outcome"] for r in results)
    assert outcomes == {"claimed": 1, "already_resolved": AGENTS - 1}
    winner = crowd[[r["outcome"] for r in results].index("claimed")]
    for result in results:
        assert (result["execution_id"], result["state"], result["exit"],
                result["merge_field"]) == (eid, "exited", "claimed", {"addClaimedBy": winner})
    # And exactly one exit message reaches the flow engine, and stays one
    assert flow.wait_for(eid)["merge_field"] == {"addClaimedBy": winner}
    assert stays(lambda: flow.count_for(eid) == 1, seconds=3.0)
    assert len(outbox_rows(eid, "exit")) == 1
    row = execution(eid)
    assert (row.state, row.exit, row.merge_field) == ("exited", "claimed",
                                                      {"addClaimedBy": winner})
    assert conversation(step["conversation_id"]).claimed_by == [winner]
    kinds = Counter(audit_kinds(eid))
    assert (kinds["claimed"], kinds["claim_lost"], kinds["exit_recorded"]) == (1, AGENTS - 1, 1)


# Offsets (seconds) of the claim's send time around the countdown's deadline: early ones
# should mostly win, late ones mostly lose; around zero either may happen, never both.
OFFSETS = (-0.04, -0.025, -0.015, -0.008, -0.003, 0.0, 0.003, 0.008, 0.015, 0.03)


def test_a_claim_racing_the_countdown_gives_exactly_one_consistent_exit(client, flow, agents,
                                                                        team):
    alice = agents()
    seen: Counter[str] = Counter()
    for offset in OFFSETS:
        step = request(team, flow.reply_to, timeout="5m",
                       popup={"text": "race", "timer": {"auto_action_timeout": "1s"}})
        eid = step["execution_id"]
        client.call("hitl.request_assistance", **step)
        deadline = execution(eid).countdown_at.timestamp()
        time.sleep(max(0.0, deadline + offset - time.time()))
        answer = client.call("hitl.claim", execution_id=eid, agent_id=alice)
        message = flow.wait_for(eid, timeout=10)
        if answer["outcome"] == "claimed":
            expected = ("claimed", {"addClaimedBy": alice})
        else:
            # The countdown won: the claim is told so, consistently with the exit
            assert (answer["outcome"], answer["state"], answer["exit"]) == (
                "already_resolved", "exited", "timer_action"), (offset, answer)
            expected = ("timer_action", {})
        assert (message["exit"], message["merge_field"]) == expected, (offset, answer)
        row = execution(eid)
        assert (row.exit, dict(row.merge_field)) == expected
        assert stays(lambda eid=eid: flow.count_for(eid) == 1, seconds=0.3)
        assert len(outbox_rows(eid, "exit")) == 1
        seen[expected[0]] += 1
    print(f"claim vs countdown: {dict(seen)}")
