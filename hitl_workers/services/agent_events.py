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
from hitl_workers.store import repo

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
    """One agent event in one transaction.

    A repeated ``event_id`` answers the stored result verbatim. Two copies of one event that
    arrive at once serialize on the execution's row lock; should they still collide (they
    resolved to different executions), the unique key on ``agent_events`` makes the second
    transaction fail and the caller retries it, which then finds the stored answer.
    """
    execution_id = event.execution_id
    if execution_id is None:
        assert event.conversation_id is not None
        execution_id = repo.waiting_execution_id(conn, event.conversation_id)
    row = repo.lock_execution(conn, execution_id) if execution_id else None

    if event.event_id is not None:
        stored = repo.stored_event_result(conn, event.agent_id, event.event_id)
        if stored is not None:
            return stored, Effects()

    if row is None:
        answer, effects = event_result("not_found", event.execution_id), Effects()
    else:
        view = repo.execution_view(conn, row)
        agent = repo.get_agent(conn, event.agent_id)
        decision = machine.decide(view, _EVENTS[action](event.agent_id, agent), now)
        effects = apply(conn, row, view, decision, now, agent_id=event.agent_id)
        answer = event_result(decision.outcome, row.execution_id, decision.state,
                              decision.exit, decision.merge_field)

    if event.event_id is not None:
        repo.store_event_result(conn, agent_id=event.agent_id, event_id=event.event_id,
                                action=action, execution_id=answer["execution_id"],
                                result=answer, now=now)
    return answer, effects


def handle_cancel(conn: Connection, cancel: CancelIn, now: datetime
                  ) -> tuple[dict[str, Any], Effects]:
    row = repo.lock_execution(conn, cancel.execution_id)
    if row is None:
        return event_result("not_found", cancel.execution_id), Effects()
    view = repo.execution_view(conn, row)
    decision = machine.decide(view, machine.Cancel(cancel.reason), now)
    effects = apply(conn, row, view, decision, now)
    return event_result(decision.outcome, row.execution_id, decision.state, decision.exit,
                        decision.merge_field), effects


def fire_timer(conn: Connection, execution_id: str, kind: str, now: datetime, *,
               skip_locked: bool = False) -> tuple[str, Effects]:
    """A deadline's wake-up: re-check the row, then fire, re-arm (early) or do nothing."""
    row = repo.lock_execution(conn, execution_id, skip_locked=skip_locked)
    if row is None:
        return ("busy" if skip_locked else "not_found"), Effects()
    view = repo.execution_view(conn, row, with_timers=True)
    decision = machine.decide(view, machine.TimerFired(kind), now)  # type: ignore[arg-type]
    effects = apply(conn, row, view, decision, now, fired=kind)
    return decision.outcome, effects
