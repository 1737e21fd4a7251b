"""Sequential offers (§9) through the services and the real store, on PostgreSQL and on SQLite
(``make run``): the locked read (offers with rounds, the pool), the hold passing on in one
transaction, the offer timer row, the idle stamps, a stale wake-up, the bell list."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from hitl_workers.clock import utcnow
from hitl_workers.services import agent_events, dispatch, routing
from hitl_workers.services import agents as directory
from hitl_workers.store import bell, repo
from hitl_workers.store.db import transaction
from hitl_workers.store.tables import agents, offers, timers
from tests.support.steps import add_agents

DEFAULTS = dispatch.Defaults("flow.exit", "flow.exits", 600.0)


def start(team: str, **offer: Any) -> tuple[str, Any]:
    execution_id = f"exec-{uuid.uuid4().hex[:12]}"
    kwargs = {"execution_id": execution_id, "conversation_id": f"conv-{uuid.uuid4().hex[:12]}",
              "conversation": {"tags": [team]},
              "settings": {"offer": {"strategy": "sequential", "offer_timeout": "10s", **offer}}}
    with transaction() as conn:
        answer, effects = dispatch.submit(conn, (), kwargs, task_id=None, now=utcnow(),
                                          defaults=DEFAULTS)
    assert answer["state"] == "waiting", answer
    return execution_id, effects


def rows(execution_id: str) -> dict[str, tuple[str, int | None]]:
    with transaction() as conn:
        return {r.agent_id: (r.status, r.round) for r in conn.execute(
            sa.select(offers.c.agent_id, offers.c.status, offers.c.round)
            .where(offers.c.execution_id == execution_id))}


def offer_timer(execution_id: str) -> Any:
    with transaction() as conn:
        return conn.execute(sa.select(timers).where(timers.c.execution_id == execution_id,
                                                    timers.c.kind == "offer")).one()


def agent_row(agent_id: str) -> Any:
    with transaction() as conn:
        return conn.execute(sa.select(agents).where(agents.c.agent_id == agent_id)).one()


def notified(effects: Any) -> list[tuple[list[str], str, Any]]:
    return [(m.payload["agents"], m.payload["event"]["type"], m.payload["event"].get("offer"))
            for m in effects.outbox]


def test_dispatch_writes_one_holder_its_offer_timer_and_its_stamp(store: str) -> None:
    team = f"team:{uuid.uuid4().hex[:8]}"
    first, second = add_agents(team, 2)
    eid, effects = start(team)
    assert rows(eid) == {first: ("offered", 1)}
    timer = offer_timer(eid)
    assert (timer.state, timer.armed_at is not None) == ("pending", True)
    assert ("offer" in [kind for _e, kind, _d in effects.arm])
    [(to, kind, offer)] = notified(effects)
    assert (to, kind, offer["round"]) == ([first], "assistance.requested", 1)
    assert agent_row(first).last_offered_at is not None
    assert agent_row(second).last_offered_at is None
    with transaction() as conn:
        assert [e["execution_id"] for e in bell.bell_list(conn, first)] == [eid]
        assert bell.bell_list(conn, second) == []
        # Someone holds it: nothing to offer the other agent when it changes
        assert eid not in routing.candidates(conn, second)


def test_a_missed_offer_passes_on_in_one_transaction_and_a_stale_wake_up_changes_nothing(
        store: str) -> None:
    team = f"team:{uuid.uuid4().hex[:8]}"
    first, second = add_agents(team, 2)
    eid, _ = start(team, on_missed="offline")
    old_due = offer_timer(eid).due_at
    with transaction() as conn:
        outcome, effects = agent_events.fire_timer(conn, eid, "offer",
                                                   old_due + timedelta(milliseconds=5),
                                                   due_at=old_due)
    assert outcome == "fired"
    assert rows(eid) == {first: ("missed", 1), second: ("offered", 1)}
    assert agent_row(first).status == "offline"
    assert effects.reassess == [(first, "status_changed")]
    assert notified(effects)[0][:2] == ([first], "assistance.withdrawn")
    new_due = offer_timer(eid).due_at
    assert new_due > old_due and offer_timer(eid).state == "pending"
    # The wake-up for the first hold, delivered again, is stale: no fire, no re-arm
    with transaction() as conn:
        outcome, effects = agent_events.fire_timer(conn, eid, "offer",
                                                   old_due + timedelta(seconds=1),
                                                   due_at=old_due)
    assert (outcome, effects.arm) == ("stale", [])
    assert rows(eid)[second] == ("offered", 1)


def test_the_next_holder_is_the_longest_idle_after_a_claim_stamps_its_agent(store: str
                                                                            ) -> None:
    team = f"team:{uuid.uuid4().hex[:8]}"
    first, second = add_agents(team, 2)
    eid, _ = start(team)
    with transaction() as conn:
        answer, _ = agent_events.handle_event(conn, "claim", agent_events.AgentEventIn(
            agent_id=first, execution_id=eid), utcnow())
    assert answer["outcome"] == "claimed"
    assert agent_row(first).last_claimed_at is not None
    # first was offered and claimed; second never was: second is idle the longest
    other, _ = start(team)
    assert rows(other) == {second: ("offered", 1)}


def test_nobody_able_then_an_agent_coming_back_gets_it(store: str) -> None:
    team = f"team:{uuid.uuid4().hex[:8]}"
    [alone] = add_agents(team, 1)
    eid, _ = start(team, on_missed="offline")
    due = offer_timer(eid).due_at
    with transaction() as conn:
        outcome, _ = agent_events.fire_timer(conn, eid, "offer", due, due_at=due)
    assert outcome == "fired"
    assert rows(eid) == {alone: ("missed", 1)}
    assert offer_timer(eid).state == "fired"  # nobody holds: the timer is done
    with transaction() as conn:
        directory.set_agent_status(conn, directory.SetStatusIn(agent_id=alone,
                                                               status="available"), utcnow())
    with transaction() as conn:
        assert routing.candidates(conn, alone) == [eid]
        outcome, effects = routing.reassess(conn, eid, alone, "status_changed", utcnow())
    assert outcome == "offered"
    assert rows(eid) == {alone: ("offered", 2)}  # it missed round 1: this is round 2
    assert offer_timer(eid).state == "pending"
    assert notified(effects)[0][2]["round"] == 2


def test_the_reconciler_passes_an_overdue_offer_on_and_arms_the_next_hold(store: str) -> None:
    from hitl_workers.services import reconcile
    from hitl_workers.services.effects import Effects

    team = f"team:{uuid.uuid4().hex[:8]}"
    first, second = add_agents(team, 2)
    eid, _ = start(team)
    due = offer_timer(eid).due_at
    published: list[Effects] = []
    # Given the wake-up was lost, when the reconciler runs after the offer timeout
    reconcile.fire_overdue(lambda: due + timedelta(seconds=1), published.append, budget_s=5)
    # Then the hold passed on, and the next hold's wake-up is published with it
    assert rows(eid) == {first: ("missed", 1), second: ("offered", 1)}
    armed = [(e, kind, at) for effects in published for e, kind, at in effects.arm if e == eid]
    assert armed == [(eid, "offer", offer_timer(eid).due_at)]


def test_an_offer_timer_on_a_broadcast_step_is_retired_by_the_reconciler(store: str) -> None:
    from hitl_workers.services import reconcile

    # Given a broadcast step and, wrongly, a pending offer timer on it (only a sequential
    # dispatch arms one: this row was written by hand, or by a bug)
    team = f"team:{uuid.uuid4().hex[:8]}"
    add_agents(team, 1)
    eid = f"exec-{uuid.uuid4().hex[:12]}"
    with transaction() as conn:
        answer, _ = dispatch.submit(conn, (), {
            "execution_id": eid, "conversation_id": f"conv-{uuid.uuid4().hex[:12]}",
            "conversation": {"tags": [team]}, "settings": {}}, task_id=None, now=utcnow(),
            defaults=DEFAULTS)
        assert answer["state"] == "waiting"
        conn.execute(sa.insert(timers).values(execution_id=eid, kind="offer", state="pending",
                                              due_at=utcnow() - timedelta(minutes=1)))
    # When the reconciler finds it overdue
    reconcile.fire_overdue(utcnow, lambda effects: None, budget_s=5)
    # Then the timer is retired (not picked up again by every tick), and the step still waits
    assert offer_timer(eid).state == "fired"
    with transaction() as conn:
        assert repo.get_execution(conn, eid).state == "waiting"
