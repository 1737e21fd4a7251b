"""Sequential offers (docs/contract.md §9 "Offer strategy"), through real workers.

A sequential step is offered to one agent at a time: in ``order``, passed on when the holder
rejects, lets ``offer_timeout`` pass (a missed offer), or can no longer claim; it exits
``REJECTED`` when every agent able to claim has rejected, and its own timeout still ends it.
Offer timeouts are kept short here (1–2 s).
"""

from __future__ import annotations

import time
from datetime import datetime

import sqlalchemy as sa

from hitl_workers.store import bell, repo
from hitl_workers.store.db import transaction
from hitl_workers.store.tables import offers, timers
from tests.support.steps import audit_trail, eventually, execution, request, stays


def sequential(team, flow, *, step_timeout="5m", **offer):
    settings = {"strategy": "sequential", "offer_timeout": "2s", **offer}
    return request(team, flow.reply_to, offer=settings, timeout=step_timeout)


def requested(streams, agent_id, eid):
    return [e for e in streams.events(agent_id)
            if e["execution_id"] == eid and e["type"] == "assistance.requested"]


def withdrawn(streams, agent_id, eid):
    return [e["state"] for e in streams.events(agent_id)
            if e["execution_id"] == eid and e["type"] == "assistance.withdrawn"]


def offer_rows(eid):
    with transaction() as conn:
        return {r.agent_id: (r.status, r.round) for r in conn.execute(
            sa.select(offers.c.agent_id, offers.c.status, offers.c.round)
            .where(offers.c.execution_id == eid))}


def holder(eid):
    return next((a for a, (status, round_) in offer_rows(eid).items()
                 if round_ is not None and status in ("offered", "closed")), None)


def status_of(agent_id):
    with transaction() as conn:
        found = repo.get_agent(conn, agent_id)
    return found.status if found is not None else None


def on_bell(agent_id, eid):
    with transaction() as conn:
        return eid in [entry["execution_id"] for entry in bell.bell_list(conn, agent_id)]


def start(client, step):
    answer = client.call("hitl.request_assistance", **step)
    assert answer["state"] == "waiting", answer
    return step["execution_id"]


def test_dispatch_offers_one_agent_the_longest_idle_first(client, flow, agents, team, streams):
    # Given three agents never offered anything (ties by agent id)
    first, second, third = sorted(agents() for _ in range(3))
    # When a sequential step is requested
    eid = start(client, sequential(team, flow))
    # Then only the first holds it, told the round and when its offer expires
    assert eventually(lambda: len(requested(streams, first, eid)) == 1)
    offer = requested(streams, first, eid)[0]["offer"]
    assert (offer["strategy"], offer["round"]) == ("sequential", 1)
    assert 1.0 < (datetime.fromisoformat(offer["expires_at"])
                  - datetime.fromisoformat(execution(eid).dispatched_at.isoformat())
                  ).total_seconds() <= 2.0
    assert stays(lambda: requested(streams, second, eid) == []
                 and requested(streams, third, eid) == [], seconds=0.5)
    assert offer_rows(eid) == {first: ("offered", 1)}
    # The bell list shows it to its holder only
    assert on_bell(first, eid) and not on_bell(second, eid)
    # And the next step goes to the agent idle the longest: the first was just offered one
    other = start(client, sequential(team, flow))
    assert eventually(lambda: len(requested(streams, second, other)) == 1)
    assert offer_rows(other) == {second: ("offered", 1)}
    made = [(r.agent_id, r.detail["reason"], r.detail["round"])
            for r in audit_trail(eid) if r.kind == "offered"]
    assert made == [(first, "at_dispatch", 1)]


def test_fewest_claimed_offers_the_agent_holding_fewest_conversations(client, flow, agents,
                                                                      team, streams):
    busy, light = agents(), agents()
    # busy claims two conversations, then light claims one (so light claimed last)
    for who in (busy, busy, light):
        step = request(team, flow.reply_to)
        client.call("hitl.request_assistance", **step)
        assert client.call("hitl.claim", execution_id=step["execution_id"],
                           agent_id=who)["outcome"] == "claimed"
    # longest_idle would offer busy (its last claim is older); fewest_claimed offers light
    idle = start(client, sequential(team, flow))
    fewest = start(client, sequential(team, flow, order="fewest_claimed"))
    assert eventually(lambda: holder(idle) == busy and holder(fewest) == light)


def test_a_holders_reject_passes_the_offer_on(client, flow, agents, team, streams):
    first, second = sorted(agents() for _ in range(2))
    eid = start(client, sequential(team, flow))
    answer = client.call("hitl.reject", execution_id=eid, agent_id=first)
    assert (answer["outcome"], answer["state"]) == ("reject_recorded", "waiting")
    assert eventually(lambda: len(requested(streams, second, eid)) == 1)
    assert eventually(lambda: withdrawn(streams, first, eid) == ["waiting"])
    assert offer_rows(eid) == {first: ("rejected", 1), second: ("offered", 1)}
    assert [(r.agent_id, r.detail) for r in audit_trail(eid) if r.kind == "offer_withdrawn"] \
        == [(first, {"reason": "rejected"})]
    assert client.call("hitl.claim", execution_id=eid, agent_id=second)["outcome"] == "claimed"


def test_an_offer_timeout_marks_it_missed_sets_on_missed_and_passes_it_on(client, flow, agents,
                                                                          team, streams):
    first, second = sorted(agents() for _ in range(2))
    eid = start(client, sequential(team, flow, offer_timeout="1s", on_missed="busy"))
    # When the holder lets its offer timeout pass
    assert eventually(lambda: len(requested(streams, second, eid)) == 1, timeout=6)
    # Then its offer is missed, its status busy, and it was told the offer moved on
    assert offer_rows(eid) == {first: ("missed", 1), second: ("offered", 1)}
    assert status_of(first) == "busy"
    assert eventually(lambda: withdrawn(streams, first, eid) == ["waiting"])
    missed = [(r.agent_id, r.detail) for r in audit_trail(eid) if r.kind == "offer_missed"]
    assert missed == [(first, {"on_missed": "busy"})]
    reasons = [(r.agent_id, r.detail["reason"]) for r in audit_trail(eid)
               if r.kind in ("offered", "offer_withdrawn")]
    assert reasons == [(first, "at_dispatch"), (first, "missed"), (second, "next_in_sequence")]
    # The missed agent may no longer claim it; the new holder may
    assert client.call("hitl.claim", execution_id=eid, agent_id=first)["outcome"] == \
        "not_eligible"
    assert client.call("hitl.claim", execution_id=eid, agent_id=second)["outcome"] == "claimed"


def test_when_everyone_able_rejected_the_step_exits_rejected(client, flow, agents, team,
                                                             streams):
    first, second, third = sorted(agents() for _ in range(3))
    eid = start(client, sequential(team, flow))
    # A non-holder may reject too: it leaves the rotation
    assert client.call("hitl.reject", execution_id=eid, agent_id=third)["outcome"] == \
        "reject_recorded"
    assert client.call("hitl.reject", execution_id=eid, agent_id=first)["outcome"] == \
        "reject_recorded"
    assert eventually(lambda: holder(eid) == second)
    answer = client.call("hitl.reject", execution_id=eid, agent_id=second)
    assert (answer["outcome"], answer["exit"]) == ("rejected", "not_claimed")
    exit_message = flow.wait_for(eid)
    assert exit_message["merge_field"] == {"reason": "REJECTED",
                                           "rejectedBy": [third, first, second]}
    assert requested(streams, third, eid) == []  # it rejected before its turn came


def test_agents_who_only_missed_are_offered_again_in_a_new_round(client, flow, agents, team,
                                                                 streams):
    alone = agents()
    eid = start(client, sequential(team, flow, offer_timeout="1s"))
    assert eventually(lambda: [e["offer"]["round"] for e in requested(streams, alone, eid)]
                      == [1, 2], timeout=6)
    assert offer_rows(eid) == {alone: ("offered", 2)}
    assert status_of(alone) == "available"  # on_missed keep
    assert client.call("hitl.claim", execution_id=eid, agent_id=alone)["outcome"] == "claimed"


def test_a_claim_by_an_agent_not_holding_it_is_refused(client, flow, agents, team):
    first, second = sorted(agents() for _ in range(2))
    eid = start(client, sequential(team, flow))
    answer = client.call("hitl.claim", execution_id=eid, agent_id=second)
    assert (answer["outcome"], answer["state"]) == ("not_eligible", "waiting")
    refusals = [(r.agent_id, r.detail) for r in audit_trail(eid) if r.kind == "claim_refused"]
    assert refusals == [(second, {"reason": "not_offered"})]
    # The holder who closed its popup still holds it and may claim
    assert client.call("hitl.close", execution_id=eid, agent_id=first)["outcome"] == "closed"
    assert holder(eid) == first
    assert client.call("hitl.claim", execution_id=eid, agent_id=first)["outcome"] == "claimed"


def test_a_holder_going_offline_passes_it_on(client, flow, agents, team, streams):
    first, second = sorted(agents() for _ in range(2))
    eid = start(client, sequential(team, flow, offer_timeout="1m"))
    client.call("hitl.set_agent_status", agent_id=first, status="offline")
    assert eventually(lambda: len(requested(streams, second, eid)) == 1, timeout=5)
    assert offer_rows(eid) == {first: ("withdrawn", 1), second: ("offered", 1)}
    assert eventually(lambda: withdrawn(streams, first, eid) == ["waiting"])
    reasons = [(r.agent_id, r.detail["reason"]) for r in audit_trail(eid)
               if r.kind == "offer_withdrawn"]
    assert reasons == [(first, "status_not_allowed:offline")]


def test_an_agent_coming_online_while_nobody_holds_it_gets_it(client, flow, agents, team,
                                                               streams):
    first = agents()
    later = agents(status="offline")
    eid = start(client, sequential(team, flow, offer_timeout="1s", on_missed="offline"))
    # The only able agent misses: it goes offline and nobody holds the step
    assert eventually(lambda: status_of(first) == "offline", timeout=6)
    assert holder(eid) is None and execution(eid).state == "waiting"
    started = time.monotonic()
    client.call("hitl.set_agent_status", agent_id=later, status="available")
    assert eventually(lambda: len(requested(streams, later, eid)) == 1, timeout=5)
    assert time.monotonic() - started < 2.0
    made = [(r.agent_id, r.detail["reason"]) for r in audit_trail(eid) if r.kind == "offered"]
    assert made == [(first, "at_dispatch"), (later, "became_eligible")]


def test_the_steps_timeout_still_ends_it(client, flow, agents, team, streams):
    alone = agents()
    eid = start(client, sequential(team, flow, offer_timeout="1s", step_timeout="3s"))
    exit_message = flow.wait_for(eid, timeout=15)
    assert exit_message["exit"] == "timeout"
    assert eventually(lambda: "exited" in withdrawn(streams, alone, eid))
    assert len(requested(streams, alone, eid)) >= 2  # it went round while it waited
    # Every deadline is done: the timeout fired, the offer timer with it
    with transaction() as conn:
        states = dict(conn.execute(sa.select(timers.c.kind, timers.c.state)
                                   .where(timers.c.execution_id == eid)).all())
    assert states["timeout"] == "fired" and states["offer"] in ("cancelled", "fired")


def test_sequential_with_a_specific_agent_or_a_bad_offer_timeout_is_invalid(client, flow,
                                                                            agents, team):
    alice = agents()
    for offer, extra, field in (
            ({"strategy": "sequential"}, {"specific_agent_id": alice}, "settings.offer.strategy"),
            ({"strategy": "sequential", "offer_timeout": "500ms"}, {},
             "settings.offer.offer_timeout"),
            ({"strategy": "sequential", "on_missed": "away"}, {}, "settings.offer.on_missed")):
        step = request(team, flow.reply_to, offer=offer, **extra)
        answer = client.call("hitl.request_assistance", **step)
        assert (answer["state"], answer["exit"]) == ("failed", "error")
        exit_message = flow.wait_for(step["execution_id"])
        assert exit_message["merge_field"]["error"]["code"] == "invalid_request"
        assert exit_message["merge_field"]["error"]["fields"] == [field]


def test_hitl_workers_show_says_why_each_sequential_offer_was_made_missed_or_withdrawn(
        client, flow, agents, team):
    from click.testing import CliRunner

    from hitl_workers.cli import main

    first, second = sorted(agents() for _ in range(2))
    eid = start(client, sequential(team, flow, offer_timeout="1s", on_missed="busy"))
    assert eventually(lambda: holder(eid) == second, timeout=6)
    client.call("hitl.reject", execution_id=eid, agent_id=second)
    text = CliRunner().invoke(main, ["show", eid]).output
    lines = {line.split()[0]: line for line in text.splitlines() if line.startswith("  agent-")}
    assert lines[first].split(None, 2)[1:] == [
        "missed", "made: at dispatch (round 1); withdrawn: missed (its offer timeout passed)"]
    assert lines[second].split(None, 2)[1:] == [
        "rejected", "made: next in sequence (round 1); withdrawn: rejected"]
    assert f"offer missed by {first}: its status set to busy" in text


def test_a_broadcast_step_with_an_offer_setting_is_unchanged(client, flow, agents, team,
                                                             streams):
    alice, bob = agents(), agents()
    step = request(team, flow.reply_to, offer={"strategy": "broadcast"})
    eid = start(client, step)
    for who in (alice, bob):
        assert eventually(lambda who=who: len(requested(streams, who, eid)) == 1)
        assert "offer" not in requested(streams, who, eid)[0]
    assert offer_rows(eid) == {alice: ("offered", None),
                                                    bob: ("offered", None)}
