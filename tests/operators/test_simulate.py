"""``hitl-workers simulate`` against the session's real worker, broker and notification Redis:
every scenario ends with the exit it announces, the sequential one (docs/contract.md §9)
included: the first holder misses its offer, the other agent claims."""

from __future__ import annotations

import re

from hitl_workers.ops.simulate import Simulator


def test_every_scenario_exits_as_it_says(system):
    lines: list[str] = []
    summary = Simulator(system.app, lines.append, timeout=30).run()
    wrong = [(title, expected, got) for title, expected, got in summary if got != expected]
    assert not wrong, "\n".join(lines)
    assert len(summary) == 9


def test_the_sequential_scenario_passes_the_offer_on_when_it_is_missed(system):
    # Given the simulator's agents (Frank and Grace see returns)
    lines: list[str] = []
    simulator = Simulator(system.app, lines.append, timeout=30)
    exits: list[dict] = []
    with simulator.listener:
        for agent in ("frank", "grace"):
            simulator.call("hitl.upsert_agent", agent_id=agent, name=agent.title(),
                           status="available", rule_groups=[["team:returns"]])
        # When the sequential step plays
        try:
            simulator.sequential_step(exits.append)
        except TimeoutError as exc:  # what the simulator saw, in the failure's message
            raise AssertionError("\n".join([str(exc), *lines])) from exc
    text = "\n".join(lines)
    # Then one agent held it alone, the other could not claim before its turn, the holder's
    # offer was withdrawn when it timed out, the other then claimed, and the first is
    # available again
    holders = re.findall(r"(frank|grace)\s+console shows the offer alone: round (\d+)", text)
    assert len(holders) == 2 and holders[0][0] != holders[1][0], text
    first, second = holders[0][0], holders[1][0]
    assert re.search(rf"{second}\s+claim -> not_eligible", text), text
    assert re.search(rf"{first}\s+console got assistance.withdrawn state=waiting", text), text
    assert re.search(rf"{second}\s+claim -> claimed", text), text
    assert re.search(rf"{first}\s+back to available", text), text
    [message] = exits
    assert (message["exit"], message["merge_field"]) == ("claimed", {"addClaimedBy": second})
