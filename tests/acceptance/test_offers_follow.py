"""Offers follow eligibility while a step waits (docs/contract.md §9), through real workers.

A step follows when it gave ``priority`` (or ``offer``), or for agents with a capacity; a
plain step and plain agents keep the §1–§5 behaviour (the last test).
"""

from __future__ import annotations

import time
import uuid

import pytest
import sqlalchemy as sa

from hitl_workers.store.db import transaction
from hitl_workers.store.tables import offers
from tests.support.steps import audit_trail, eventually, execution, request, stays


def kinds(streams, agent_id, eid):
    return [(e["type"], e.get("state")) for e in streams.events(agent_id)
            if e["execution_id"] == eid]


def offer_of(eid, agent_id):
    with transaction() as conn:
        return conn.execute(sa.select(offers.c.status).where(
            offers.c.execution_id == eid, offers.c.agent_id == agent_id)).scalar()


@pytest.fixture
def capped(client, team):
    created: list[str] = []

    def make(capacity, status="available"):
        agent_id = f"agent-{uuid.uuid4().hex[:10]}"
        client.call("hitl.upsert_agent", agent_id=agent_id, status=status,
                    rule_groups=[[team]], capacity=capacity)
        created.append(agent_id)
        return agent_id

    yield make
    for agent_id in created:
        client.call("hitl.remove_agent", agent_id=agent_id)


def test_an_agent_coming_online_is_offered_and_going_busy_withdraws_it(
        client, flow, agents, team, streams):
    alice, bob = agents(), agents(status="offline")
    step = request(team, flow.reply_to, priority=0)
    eid = step["execution_id"]
    client.call("hitl.request_assistance", **step)
    assert kinds(streams, bob, eid) == []
    # When bob comes online, he is offered the waiting step (within a second)
    started = time.monotonic()
    client.call("hitl.set_agent_status", agent_id=bob, status="available")
    assert eventually(lambda: kinds(streams, bob, eid) == [("assistance.requested", None)],
                      timeout=5)
    assert time.monotonic() - started < 1.5
    requested = next(e for e in streams.events(bob) if e["execution_id"] == eid)
    assert (requested["conversation_id"], requested["contact"]) == (
        step["conversation_id"], step["conversation"]["contact"])
    assert offer_of(eid, bob) == "offered"
    made = [r for r in audit_trail(eid) if r.kind == "offered"]
    assert [(r.agent_id, r.detail) for r in made] == [(bob, {"reason": "status_changed"})]
    # When alice goes busy, her offer is withdrawn, the step still waiting
    client.call("hitl.set_agent_status", agent_id=alice, status="busy")
    assert eventually(lambda: ("assistance.withdrawn", "waiting") in kinds(streams, alice, eid))
    assert offer_of(eid, alice) == "withdrawn"
    withdrawn = [r for r in audit_trail(eid) if r.kind == "offer_withdrawn"]
    assert [(r.agent_id, r.detail) for r in withdrawn] == [
        (alice, {"reason": "status_not_allowed:busy"})]
    assert execution(eid).state == "waiting"
    # And back to available, she is offered it again; bob claims
    client.call("hitl.set_agent_status", agent_id=alice, status="available")
    assert eventually(lambda: kinds(streams, alice, eid)[-1] == ("assistance.requested", None))
    assert client.call("hitl.claim", execution_id=eid, agent_id=bob)["outcome"] == "claimed"


def test_an_agent_who_rejected_or_closed_is_not_offered_again(client, flow, agents, team,
                                                              streams):
    alice, bob, carol = agents(), agents(), agents()
    step = request(team, flow.reply_to, priority=3, reject_policy="all")
    eid = step["execution_id"]
    client.call("hitl.request_assistance", **step)
    assert client.call("hitl.reject", execution_id=eid, agent_id=alice)["outcome"] == \
        "reject_recorded"
    assert client.call("hitl.close", execution_id=eid, agent_id=bob)["outcome"] == "closed"
    for who in (alice, bob):
        client.call("hitl.set_agent_status", agent_id=who, status="offline")
        client.call("hitl.set_agent_status", agent_id=who, status="available")
    assert stays(lambda: [k for k, _ in kinds(streams, alice, eid)] ==
                 ["assistance.requested"], seconds=1.0)
    assert [k for k, _ in kinds(streams, bob, eid)] == ["assistance.requested"]
    assert carol and execution(eid).state == "waiting"


def test_under_all_an_agent_no_longer_able_is_no_longer_awaited(client, flow, agents, team,
                                                                streams):
    alice, bob = agents(), agents()
    step = request(team, flow.reply_to, priority=0, reject_policy="all")
    eid = step["execution_id"]
    client.call("hitl.request_assistance", **step)
    assert client.call("hitl.reject", execution_id=eid, agent_id=alice)["outcome"] == \
        "reject_recorded"
    # Bob goes offline: every agent offered so far and still able to claim has rejected
    client.call("hitl.set_agent_status", agent_id=bob, status="offline")
    exit_message = flow.wait_for(eid)
    assert exit_message["merge_field"] == {"reason": "REJECTED", "rejectedBy": [alice]}
    assert ("assistance.withdrawn", "exited") in kinds(streams, bob, eid)


def test_a_new_agent_in_the_directory_is_offered_a_waiting_routed_step(client, flow, agents,
                                                                      team, streams):
    agents()
    step = request(team, flow.reply_to, priority=1)
    eid = step["execution_id"]
    client.call("hitl.request_assistance", **step)
    newcomer = agents()
    assert eventually(lambda: kinds(streams, newcomer, eid) == [("assistance.requested", None)])
    made = [r for r in audit_trail(eid) if r.kind == "offered"]
    assert [(r.agent_id, r.detail) for r in made] == [(newcomer,
                                                      {"reason": "directory_changed"})]


def test_at_capacity_offers_are_withdrawn_and_a_freed_slot_offers_higher_priority_first(
        client, flow, team, capped, streams):
    alice = capped(1)
    first = request(team, flow.reply_to)
    client.call("hitl.request_assistance", **first)
    low = request(team, flow.reply_to, allow_busy=True)
    client.call("hitl.request_assistance", **low)
    # When alice claims the first, she is at capacity: her offer of the other is withdrawn
    assert client.call("hitl.claim", execution_id=first["execution_id"],
                       agent_id=alice)["outcome"] == "claimed"
    assert eventually(lambda: ("assistance.withdrawn", "waiting") in kinds(
        streams, alice, low["execution_id"]))
    withdrawn = [r for r in audit_trail(low["execution_id"]) if r.kind == "offer_withdrawn"]
    assert [r.detail for r in withdrawn] == [{"reason": "at_capacity"}]
    # A more urgent step arrives meanwhile: at capacity, she is not offered it (allow_busy waits)
    urgent = request(team, flow.reply_to, allow_busy=True, priority=9)
    assert client.call("hitl.request_assistance", **urgent)["state"] == "waiting"
    assert kinds(streams, alice, urgent["execution_id"]) == []
    # When the first conversation is released, she is offered both, the urgent one first
    client.call("hitl.release", conversation_id=first["conversation_id"], agent_id=alice)
    offered = lambda: [e["execution_id"] for e in streams.events(alice)  # noqa: E731
                       if e["type"] == "assistance.requested"
                       and e["execution_id"] in (low["execution_id"], urgent["execution_id"])]
    assert eventually(lambda: len(offered()) == 3)
    assert offered()[1:] == [urgent["execution_id"], low["execution_id"]]
    assert [r.detail for r in audit_trail(urgent["execution_id"]) if r.kind == "offered"] == [
        {"reason": "slot_freed"}]
    assert client.call("hitl.claim", execution_id=urgent["execution_id"],
                       agent_id=alice)["outcome"] == "claimed"


def test_a_plain_step_and_plain_agents_keep_the_offers_made_at_dispatch(client, flow, agents,
                                                                        team, streams):
    alice, bob = agents(), agents(status="offline")
    step = request(team, flow.reply_to)
    eid = step["execution_id"]
    client.call("hitl.request_assistance", **step)
    client.call("hitl.set_agent_status", agent_id=bob, status="available")
    client.call("hitl.set_agent_status", agent_id=alice, status="busy")
    assert stays(lambda: kinds(streams, bob, eid) == [] and
                 kinds(streams, alice, eid) == [("assistance.requested", None)], seconds=1.0)
    assert offer_of(eid, alice) == "offered" and offer_of(eid, bob) is None


def test_hitl_workers_show_says_why_each_offer_was_made_or_withdrawn(client, flow, agents,
                                                                      team, capped):
    from click.testing import CliRunner

    from hitl_workers.cli import main

    alice, bob = agents(), agents(status="offline")
    carol = capped(1)
    step = request(team, flow.reply_to, priority=2)
    eid = step["execution_id"]
    client.call("hitl.request_assistance", **step)
    client.call("hitl.set_agent_status", agent_id=bob, status="available")
    client.call("hitl.set_agent_status", agent_id=alice, status="busy")
    other = request(team, flow.reply_to)
    client.call("hitl.request_assistance", **other)
    client.call("hitl.claim", execution_id=other["execution_id"], agent_id=carol)
    assert eventually(lambda: offer_of(eid, carol) == "withdrawn")
    client.call("hitl.release", conversation_id=other["conversation_id"], agent_id=carol)
    assert eventually(lambda: offer_of(eid, carol) == "offered")

    text = CliRunner().invoke(main, ["show", eid]).output
    lines = {line.split()[0]: line for line in text.splitlines()
             if line.startswith("  agent-")}
    assert "made at dispatch; withdrawn: status changed to busy" in lines[alice]
    assert "made: became eligible (status changed)" in lines[bob]
    assert ("made at dispatch; withdrawn: at capacity; made: became eligible (a slot freed)"
            in lines[carol])
    assert f"offer withdrawn from {alice}: status changed to busy" in text
