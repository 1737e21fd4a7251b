"""Offers that follow eligibility while a step waits (docs/contract.md §9).

When an agent's ability to claim may have changed — its status or directory entry changed, a
slot freed (``hitl.release``) or filled (a claim) — each waiting step it could be offered, or
holds an open offer of, is reassessed in a transaction of its own: lock, decide
(:class:`hitl_workers.domain.machine.Reassess`), write, like every other transition. The
machine decides whether the step follows eligibility at all (``priority`` or ``offer`` given,
or the agent has a capacity); a step with neither keeps the §1–§5 behaviour.

Why a transaction per step, after the change committed: the change itself (an UPDATE of the
agent, a release) then never holds an execution's lock. Each reassessment locks an agent that
has a capacity before the execution, the order a claim takes (store/executions.py), so none of
them can deadlock with a claim, and a claim that fills the agent's last slot is either seen by
the reassessment (no offer) or reassesses after it (the offer is withdrawn). An agent without
a capacity has no slot to race for: its row is not locked.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.engine import Connection

from hitl_workers.domain import machine
from hitl_workers.notify import events as notifications
from hitl_workers.services import outbox, sequence
from hitl_workers.services.effects import Effects, FirstOffer, OffersChanged
from hitl_workers.services.transitions import apply
from hitl_workers.store import bell, executions, repo

MAX_STEPS_PER_CHANGE = 500
"""Waiting steps offered to one agent per change; the bell list shows any beyond."""


def candidates(conn: Connection, agent_id: str) -> list[str]:
    """The waiting executions whose offer to ``agent_id`` may have to change: those it holds an
    open offer of (to withdraw), then those it may claim now, higher priority first, then the
    oldest (to offer). Only steps that follow eligibility, unless the agent has a capacity."""
    agent = repo.get_agent(conn, agent_id)
    with_capacity = agent is not None and agent.capacity is not None
    found = repo.executions_open_to(conn, agent_id)
    for row in bell.claimable(conn, agent_id, MAX_STEPS_PER_CHANGE,
                              routed_only=not with_capacity, unheld=True):
        if row.execution_id not in found:
            found.append(row.execution_id)
    return found


def reassess(conn: Connection, execution_id: str, agent_id: str, why: str, now: datetime
             ) -> tuple[str, Effects]:
    """One step, one agent: offer, withdraw, or leave as it is (outcome ``stale``)."""
    # The agent is locked before the execution (as a claim does): see the module docstring.
    found = executions.lock(conn, execution_id, agent_id=agent_id, claiming=True)
    if found.row is None or found.view is None:
        return "not_found", Effects()
    row, view = found.row, found.view
    decision = machine.decide(view, machine.Reassess(agent_id, found.agent, why), now)
    effects = apply(conn, row, view, decision, now, agent_id=agent_id)
    stamp = now.isoformat()
    if decision.offer_change is not None:
        change = "made" if decision.offer_change[1] == "offered" else "withdrawn"
        reason = str(decision.detail.get("reason", "rejected_by_all"))
        effects.observations.append(OffersChanged(change, reason))
    if decision.offer_change == (agent_id, "offered"):
        if not view.offers and row.dispatched_at is not None:
            # Nobody was offered it at dispatch (every able agent at capacity): this is its
            # first offer. (A sequential step's own first offer: services/sequence.py.)
            effects.observations.append(FirstOffer(row.dispatched_at, now))
        event = sequence.requested_event(conn, row, view)
        if event is not None:
            event["id"] = f"requested:{execution_id}:{agent_id}:{stamp}"
            outbox.notify(conn, effects, key=event["id"], execution_id=execution_id,
                          agents=[agent_id], event=event, now=now)
    elif decision.offer_change == (agent_id, "withdrawn"):
        # Withdrawn before any exit: the exit's own withdrawal (to open offers) misses it.
        event = notifications.withdrawn(
            execution_id=execution_id, conversation_id=row.conversation_id,
            state=decision.state, exit=decision.exit, claimed_by=None,
            suffix=f":{agent_id}:{stamp}")
        outbox.notify(conn, effects, key=event["id"], execution_id=execution_id,
                      agents=[agent_id], event=event, now=now)
    return decision.outcome, effects
