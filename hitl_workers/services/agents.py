"""The agent directory (docs/contract.md §5)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import Field, StringConstraints
from sqlalchemy.engine import Connection

from hitl_workers.domain import machine
from hitl_workers.domain.names import AgentStatus
from hitl_workers.domain.request import Identifier, Tag, _Strict
from hitl_workers.domain.validation import Invalid
from hitl_workers.notify import events as notifications
from hitl_workers.services import outbox
from hitl_workers.services.effects import Effects
from hitl_workers.services.transitions import apply
from hitl_workers.store import executions, repo
from hitl_workers.store.tables import MAX_CAPACITY

Status = AgentStatus  # domain/names.py


class UpsertAgentIn(_Strict):
    agent_id: Identifier
    name: Annotated[str, StringConstraints(max_length=200)] = ""
    status: Status = "offline"
    rule_groups: Annotated[list[Annotated[list[Tag], Field(max_length=50)]],
                           Field(max_length=100)] = []
    capacity: Annotated[int, Field(ge=1, le=MAX_CAPACITY)] | None = None
    """How many conversations it may hold claimed at once; None: unlimited (§9)."""


class SetStatusIn(_Strict):
    agent_id: Identifier
    status: Status


class RemoveAgentIn(_Strict):
    agent_id: Identifier


class ReleaseIn(_Strict):
    conversation_id: Identifier
    agent_id: Identifier | None = None


def invalid_result(problem: Invalid, kwargs: dict[str, Any]) -> dict[str, Any]:
    agent_id = kwargs.get("agent_id")
    return {"agent_id": agent_id if isinstance(agent_id, str) else None, "status": "invalid",
            "error": {"code": "invalid_request", "message": problem.message,
                      "fields": problem.fields}}


def upsert_agent(conn: Connection, agent: UpsertAgentIn, now: datetime) -> dict[str, Any]:
    repo.upsert_agent(conn, agent_id=agent.agent_id, name=agent.name, status=agent.status,
                      rule_groups=[list(g) for g in agent.rule_groups], now=now,
                      capacity=agent.capacity)
    return {"agent_id": agent.agent_id, "status": agent.status}


def set_agent_status(conn: Connection, change: SetStatusIn, now: datetime) -> dict[str, Any]:
    if not repo.set_agent_status(conn, change.agent_id, change.status, now):
        return {"agent_id": change.agent_id, "status": "not_found"}
    return {"agent_id": change.agent_id, "status": change.status}


def remove_agent(conn: Connection, removal: RemoveAgentIn, now: datetime
                 ) -> tuple[dict[str, Any], Effects]:
    """Delete the agent and withdraw its open offers, one locked execution at a time."""
    agent_id = removal.agent_id
    repo.delete_agent(conn, agent_id)
    effects = Effects()
    for execution_id in repo.executions_offered_to(conn, agent_id):
        found = executions.lock(conn, execution_id)
        row, view = found.row, found.view
        if row is None or view is None:
            continue
        decision = machine.decide(view, machine.AgentRemoved(agent_id), now)
        step_effects = apply(conn, row, view, decision, now, agent_id=agent_id)
        effects.merge(step_effects)
        if decision.offer_change is not None:
            # The removed agent's offer is withdrawn before any exit, so the exit's own
            # withdrawal (sent to live offers) does not reach it: tell it here.
            event = notifications.withdrawn(
                execution_id=execution_id, conversation_id=row.conversation_id,
                state=decision.state, exit=decision.exit, claimed_by=None,
                suffix=f":{agent_id}")
            outbox.notify(conn, effects, key=f"withdrawn:{execution_id}:{agent_id}",
                          execution_id=execution_id, agents=[agent_id], event=event, now=now)
    return {"agent_id": agent_id, "status": "removed"}, effects


def release(conn: Connection, release: ReleaseIn, now: datetime
            ) -> tuple[dict[str, Any], list[str]]:
    """Take the agent (None: every agent) out of the conversation's ``claimed_by`` (§9),
    freeing its capacity. An unknown conversation answers ``claimed_by: null``. Also returns
    the agents released (whose waiting offers may now follow, services/routing.py)."""
    released = repo.release_conversation(conn, release.conversation_id, release.agent_id, now)
    if released is None:
        return {"conversation_id": release.conversation_id, "claimed_by": None}, []
    before, after = released
    return ({"conversation_id": release.conversation_id, "claimed_by": after},
            [a for a in before if a not in after])
