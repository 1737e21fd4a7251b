"""Sequential offers under races, through real worker processes (docs/contract.md §9).

"At most one agent holds a sequential offer at any moment": a reject, the offer's own timeout,
a claim, a status change and the step's own deadlines are fired together here, and every test
asserts one holder at a time (read back from the audit trail, and from the offers the
database keeps) and exactly one exit. The worker runs 6 pool processes, so the messages sent
at once really are decided at the same moment, each under its own database connection.
"""

from __future__ import annotations

import time
from collections import Counter
from itertools import groupby
from typing import Any

import sqlalchemy as sa

from hitl_workers.store.db import transaction
from hitl_workers.store.tables import offers, timers
from tests.support.steps import (
    audit_trail,
    call_at_once,
    eventually,
    execution,
    request,
    stays,
)

HOLDING = ("offered", "closed")
LEAVING = {"offer_missed", "offer_withdrawn", "rejected"}


def sequential(team: str, reply_to: dict[str, str], offer_timeout: str = "1s",
               **settings: Any) -> dict[str, Any]:
    settings.setdefault("timeout", "1h")
    return request(team, reply_to, offer={"strategy": "sequential",
                                          "offer_timeout": offer_timeout}, **settings)


def holders(eid: str) -> list[str]:
    """The agents the database says hold the sequential offer now."""
    with transaction() as conn:
        return sorted(conn.execute(sa.select(offers.c.agent_id).where(
            offers.c.execution_id == eid, offers.c.round.is_not(None),
            offers.c.status.in_(HOLDING))).scalars())


def offer_status(eid: str, agent_id: str) -> str | None:
    with transaction() as conn:
        return conn.execute(sa.select(offers.c.status).where(
            offers.c.execution_id == eid, offers.c.agent_id == agent_id)).scalar()


def offer_due(eid: str) -> float:
    """When the current hold's offer timeout is due (epoch seconds)."""
    with transaction() as conn:
        due = conn.execute(sa.select(timers.c.due_at).where(
            timers.c.execution_id == eid, timers.c.kind == "offer")).scalar_one()
    return float(due.timestamp())


def holds_in_turn(eid: str) -> list[str]:
    """Walk the audit trail and return the holders in the order they held, asserting that a
    hold was only ever made with nobody holding.

    One transition writes its audit rows with one timestamp; within it the hold that ends is
    counted before the one that begins (a reject passing the offer on writes both)."""
    held: list[str] = []
    current: str | None = None
    for _at, group in groupby(audit_trail(eid), key=lambda r: r.at):
        rows = list(group)
        for row in rows:
            if row.kind in LEAVING and row.agent_id == current:
                current = None
        for row in rows:
            if row.kind == "offered":
                assert current is None, (f"{row.agent_id} was offered the step while "
                                         f"{current} held it", _trail(eid))
                current = row.agent_id
                held.append(current)
    return held


def _trail(eid: str) -> list[tuple[str, str | None]]:
    return [(r.kind, r.agent_id) for r in audit_trail(eid)]


def first_holder(eid: str) -> str:
    found = eventually(lambda: holders(eid), timeout=5)
    assert len(found) == 1, found
    return found[0]


def test_ten_agents_claiming_a_sequential_step_at_once_only_the_holder_wins(
        client, flow, agents, team, system):
    # Given ten available agents and a sequential step, which one of them holds
    crowd = [agents() for _ in range(10)]
    step = sequential(team, flow.reply_to, offer_timeout="1m")
    eid = step["execution_id"]
    assert client.call("hitl.request_assistance", **step)["state"] == "waiting"
    holder = first_holder(eid)
    # When all ten claim at the same moment
    results = call_at_once(system.app, [("hitl.claim", {"execution_id": eid, "agent_id": a})
                                        for a in crowd])
    # Then the holder wins; the nine others, never offered it, are refused (or, decided after
    # the holder's claim, told it is resolved)
    by_agent = dict(zip(crowd, results, strict=True))
    assert by_agent[holder]["outcome"] == "claimed"
    others = Counter(r["outcome"] for a, r in by_agent.items() if a != holder)
    assert set(others) <= {"not_eligible", "already_resolved"} and others.total() == 9, others
    assert flow.wait_for(eid)["merge_field"] == {"addClaimedBy": holder}
    assert stays(lambda: flow.count_for(eid) == 1, seconds=2.0)
    assert holds_in_turn(eid) == [holder]


# Offsets (seconds) of the answer's send time around the holder's offer timeout.
OFFSETS = (-0.03, -0.012, -0.004, 0.0, 0.004, 0.012, 0.03)


def test_the_holders_claim_racing_its_offer_timeout_is_one_or_the_other(
        client, flow, agents, team):
    pair = {agents(), agents()}
    seen: Counter[str] = Counter()
    for offset in OFFSETS:
        # Given a sequential step held by one of two agents, its offer due in a second
        step = sequential(team, flow.reply_to)
        eid = step["execution_id"]
        client.call("hitl.request_assistance", **step)
        holder = first_holder(eid)
        (other,) = pair - {holder}
        # When the holder claims just before, at or just after the offer times out
        time.sleep(max(0.0, offer_due(eid) + offset - time.time()))
        answer = client.call("hitl.claim", execution_id=eid, agent_id=holder)
        seen[answer["outcome"]] += 1
        if answer["outcome"] == "claimed":
            # Then either the claim won: the step exits claimed, and the offer never passed on
            assert flow.wait_for(eid)["merge_field"] == {"addClaimedBy": holder}
            assert holds_in_turn(eid) == [holder], offset
            assert offer_status(eid, other) is None
        else:
            # Or the offer timed out first: the claim is refused, the other agent holds it
            assert answer["outcome"] == "not_eligible", (offset, answer)
            assert eventually(lambda eid=eid, other=other: holders(eid) == [other]), (
                offset, _trail(eid))
            assert offer_status(eid, holder) == "missed"
            assert holds_in_turn(eid)[:2] == [holder, other]
            assert execution(eid).state == "waiting"
            client.call("hitl.cancel", execution_id=eid)
        assert stays(lambda eid=eid: flow.count_for(eid) <= 1, seconds=0.3)
    assert sum(seen.values()) == len(OFFSETS)


def test_the_holders_reject_racing_its_offer_timeout_passes_the_offer_on_once(
        client, flow, agents, team):
    trio = {agents(), agents(), agents()}
    for offset in OFFSETS:
        # Given a sequential step held by one of three agents
        step = sequential(team, flow.reply_to, offer_timeout="1s")
        eid = step["execution_id"]
        client.call("hitl.request_assistance", **step)
        holder = first_holder(eid)
        # When the holder rejects just before, at or just after its offer times out
        time.sleep(max(0.0, offer_due(eid) + offset - time.time()))
        answer = client.call("hitl.reject", execution_id=eid, agent_id=holder)
        # Then the reject is recorded either way (from the holder, or from an agent offered
        # it before), and exactly one other agent holds the offer
        assert answer["outcome"] == "reject_recorded", (offset, answer)
        assert eventually(lambda eid=eid, holder=holder: len(holders(eid)) == 1
                          and holders(eid)[0] != holder), (offset, _trail(eid))
        assert set(holders(eid)) <= trio - {holder}
        assert offer_status(eid, holder) == "rejected"
        turns = holds_in_turn(eid)
        assert turns[0] == holder and holder not in turns[1:], (offset, turns)
        assert execution(eid).state == "waiting"
        client.call("hitl.cancel", execution_id=eid)


def test_a_claim_due_with_the_offer_timeout_and_the_steps_timeout_gives_one_exit(
        client, flow, agents, team):
    agents(), agents()
    exits: Counter[str] = Counter()
    for offset in (-0.01, 0.0, 0.01):
        # Given a sequential step whose offer and whose own timeout are due together
        step = sequential(team, flow.reply_to, offer_timeout="2s", timeout="2s")
        eid = step["execution_id"]
        client.call("hitl.request_assistance", **step)
        holder = first_holder(eid)
        due = min(offer_due(eid), execution(eid).timeout_at.timestamp())
        # When the holder claims as both fall due
        time.sleep(max(0.0, due + offset - time.time()))
        answer = client.call("hitl.claim", execution_id=eid, agent_id=holder)
        # Then the step leaves by exactly one exit: the claim or the timeout
        message = flow.wait_for(eid, timeout=10)
        exits[message["exit"]] += 1
        assert message["exit"] in ("claimed", "timeout"), message
        if message["exit"] == "claimed":
            assert answer["outcome"] == "claimed"
            assert message["merge_field"] == {"addClaimedBy": holder}
        else:
            assert answer["outcome"] in ("already_resolved", "not_eligible"), answer
        assert stays(lambda eid=eid: flow.count_for(eid) == 1, seconds=1.5)
        # And nobody is offered the step once it has ended
        kinds = [r.kind for r in audit_trail(eid)]
        assert "offered" not in kinds[kinds.index("exit_recorded"):], _trail(eid)
        row = execution(eid)
        assert (row.state, row.exit) == ("exited", message["exit"])
        holds_in_turn(eid)
    assert sum(exits.values()) == 3


def test_a_storm_of_rejects_status_changes_and_claims_never_makes_two_holders(
        client, flow, agents, team, system):
    crowd = [agents() for _ in range(5)]
    for round_ in range(4):
        # Given a sequential step held by one of five agents, its offer due in a second
        step = sequential(team, flow.reply_to, offer_timeout="1s")
        eid = step["execution_id"]
        client.call("hitl.request_assistance", **step)
        holder = first_holder(eid)
        others = [a for a in crowd if a != holder]
        # When, as the offer times out, the holder rejects, one agent goes offline, another
        # comes back, and two who do not hold the offer try to claim it — all at once
        time.sleep(max(0.0, offer_due(eid) - 0.005 - time.time()))
        results = call_at_once(system.app, [
            ("hitl.reject", {"execution_id": eid, "agent_id": holder}),
            ("hitl.set_agent_status", {"agent_id": others[0], "status": "offline"}),
            ("hitl.set_agent_status", {"agent_id": others[1], "status": "available"}),
            ("hitl.claim", {"execution_id": eid, "agent_id": others[2]}),
            ("hitl.claim", {"execution_id": eid, "agent_id": others[3]}),
        ])
        # Then at most one claim won — only from the agent holding the offer at that moment
        claims = [r["outcome"] for r in results[3:]]
        assert claims.count("claimed") <= 1, claims
        time.sleep(1.5)  # the next offer timeouts and reassessments settle
        turns = holds_in_turn(eid)
        assert turns[0] == holder and holder not in turns[1:], turns
        row = execution(eid)
        if "claimed" in claims:
            winner = others[2 + claims.index("claimed")]
            assert (row.exit, row.merge_field) == ("claimed", {"addClaimedBy": winner})
            assert winner in turns
            assert flow.wait_for(eid)["merge_field"] == {"addClaimedBy": winner}
        else:
            # And the step still waits with exactly one holder, or none when nobody is able
            assert row.state == "waiting", (round_, _trail(eid))
            assert len(holders(eid)) <= 1
            client.call("hitl.cancel", execution_id=eid)
        assert stays(lambda eid=eid: flow.count_for(eid) <= 1, seconds=0.5)
        client.call("hitl.set_agent_status", agent_id=others[0], status="available")
