"""Claim, reject, close (docs/contract.md §3) and cancel (§4): one locked transition each."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import model_validator
from sqlalchemy.engine import Connection

from hitl_workers.domain import machine
from hitl_workers.domain.request import Identifier, _Strict
from hitl_workers.domain.validation import Invalid, parse_kwargs
from hitl_workers.services.effects import Effects
from hitl_workers.services.transitions import apply
from hitl_workers.store import executions, repo
from hitl_workers.store.executions import StoredEvent

Action = Literal["claim", "reject", "close"]
_EVENTS: dict[str, type[machine.Claim | machine.Reject | machine.Close]] = {
    "claim": machine.Claim, "reject": machine.Reject, "close": machine.Close}


class AgentEventIn(_Strict):
    agent_id: Identifier
    execution_id: Identifier | None = None
    conversation_id: Identifier | None = None
    event_id: Identifier | None = None

    @model_validator(mode="after")
    def _one_target(self) -> AgentEventIn:
        if (self.execution_id is None) == (self.conversation_id is None):
            raise ValueError("give exactly one of execution_id and conversation_id")
        return self


class CancelIn(_Strict):
    execution_id: Identifier
    reason: str = ""


def event_result(outcome: str, execution_id: str | None, state: str | None = None,
                 exit: str | None = None, merge_field: Any = None) -> dict[str, Any]:
    return {"outcome": outcome, "execution_id": execution_id, "state": state, "exit": exit,
            "merge_field": merge_field}


def invalid_result(problem: Invalid, execution_id: Any = None) -> dict[str, Any]:
    answer = event_result("invalid", execution_id if isinstance(execution_id, str) else None)
    answer["error"] = {"code": "invalid_request", "message": problem.message,
                       "fields": problem.fields}
    return answer


def parse_event(args: tuple[Any, ...], kwargs: dict[str, Any]) -> AgentEventIn | Invalid:
    return parse_kwargs(AgentEventIn, args, kwargs)


def parse_cancel(args: tuple[Any, ...], kwargs: dict[str, Any]) -> CancelIn | Invalid:
    return parse_kwargs(CancelIn, args, kwargs)


def handle_event(conn: Connection, action: Action, event: AgentEventIn, now: datetime
                 ) -> tuple[dict[str, Any], Effects]:
    """One agent event in one transaction: one read under the lock, one write, the commit.

    A repeated ``event_id`` answers the stored result verbatim; the same ``event_id`` for
    another action or another target answers ``invalid`` (``event_id_reused``) and changes
    nothing (docs/contract.md §3). Two copies of one event that arrive at once serialize on the
    execution's row lock, and the second reads the first's stored answer; should they still
    collide (they resolved to different executions), the unique key on ``agent_events`` makes
    the second transaction fail and the caller retries it, which then finds the stored answer.
    An event on an execution that does not exist stores nothing (§8 "Limits").
    """
    execution_id = event.execution_id
    if execution_id is None:
        assert event.conversation_id is not None
        execution_id = repo.waiting_execution_id(conn, event.conversation_id)
    found = executions.lock(conn, execution_id, agent_id=event.agent_id,
                            event_id=event.event_id, claiming=action == "claim")

    if found.stored is not None:
        if _same_event(found.stored, action, event):
            return found.stored.result, Effects()
        return _reused(found.stored, action, event), Effects()

    if found.row is None or found.view is None:
        return event_result("not_found", event.execution_id), Effects()
    decision = machine.decide(found.view, _EVENTS[action](event.agent_id, found.agent), now)
    answer = event_result(decision.outcome, found.row.execution_id, decision.state,
                          decision.exit, decision.merge_field)
    # The answer is stored by the transition's own write (one statement).
    stored = (event.agent_id, event.event_id, action, answer["execution_id"],
              event.conversation_id, answer) if event.event_id is not None else None
    effects = apply(conn, found.row, found.view, decision, now, agent_id=event.agent_id,
                    answer=stored)
    if decision.outcome == "claimed" and found.agent is not None \
            and found.agent.capacity is not None:
        # §9: one more conversation held; at capacity its open offers are withdrawn.
        effects.reassess.append((event.agent_id, "slot_filled"))
    return answer, effects


def _same_event(stored: StoredEvent, action: str, event: AgentEventIn) -> bool:
    if stored.action != action:
        return False
    if event.conversation_id is not None:
        return stored.conversation_id == event.conversation_id
    return stored.conversation_id is None and stored.execution_id == event.execution_id


def _reused(stored: StoredEvent, action: str, event: AgentEventIn) -> dict[str, Any]:
    first = (f"conversation {stored.conversation_id}" if stored.conversation_id
             else f"execution {stored.execution_id}")
    now_target = (f"conversation {event.conversation_id}" if event.conversation_id
                  else f"execution {event.execution_id}")
    answer = event_result("invalid", event.execution_id)
    answer["error"] = {
        "code": "event_id_reused",
        "message": f"event_id {event.event_id!r} of agent {event.agent_id} was first used to "
                   f"{stored.action} {first}; it cannot also {action} {now_target}. Nothing "
                   "was changed: send a new event_id for a new action",
        "fields": ["event_id"]}
    return answer


def handle_cancel(conn: Connection, cancel: CancelIn, now: datetime
                  ) -> tuple[dict[str, Any], Effects]:
    found = executions.lock(conn, cancel.execution_id)
    if found.row is None or found.view is None:
        return event_result("not_found", cancel.execution_id), Effects()
    decision = machine.decide(found.view, machine.Cancel(cancel.reason), now)
    effects = apply(conn, found.row, found.view, decision, now)
    return event_result(decision.outcome, found.row.execution_id, decision.state,
                        decision.exit, decision.merge_field), effects


def fire_timer(conn: Connection, execution_id: str, kind: str, now: datetime, *,
               skip_locked: bool = False, due_at: datetime | None = None
               ) -> tuple[str, Effects]:
    """A deadline's wake-up: re-check the row, then fire, re-arm (early) or do nothing.

    ``due_at``: the deadline the wake-up was armed for, when known; an ``offer`` wake-up
    armed for an earlier hold is then stale (machine.py)."""
    if skip_locked:
        locked = repo.lock_execution(conn, execution_id, skip_locked=True)
        if locked is None:
            return "busy", Effects()
        row = executions.LockedExecution.from_row(locked)
        view = executions.views(conn, [row])[execution_id]
    else:
        found = executions.lock(conn, execution_id, holder_first=kind == "offer")
        if found.row is None or found.view is None:
            return "not_found", Effects()
        row, view = found.row, found.view
    decision = machine.decide(view, machine.TimerFired(kind, due_at),  # type: ignore[arg-type]
                              now)
    effects = apply(conn, row, view, decision, now, fired=kind)
    return decision.outcome, effects
