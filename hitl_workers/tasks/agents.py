"""The agent directory tasks (queue ``hitl.requests``, docs/contract.md §5)."""

from __future__ import annotations

from typing import Any

from hitl_workers.app import app
from hitl_workers.clock import utcnow
from hitl_workers.domain.validation import Invalid, parse_kwargs
from hitl_workers.services import agents
from hitl_workers.services.effects import Effects
from hitl_workers.tasks.common import RETRY, after_commit, dead_letter, in_transaction
from hitl_workers.tasks.guard import GuardedTask
from hitl_workers.tasks.routing import follow


def _reject_invalid(task: Any, name: str, problem: Invalid, args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> dict[str, Any]:
    dead_letter(name, task.request.id, args, kwargs, problem.message)
    return agents.invalid_result(problem, kwargs)


@app.task(name="hitl.upsert_agent", base=GuardedTask, bind=True, **RETRY)
def upsert_agent(self: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    parsed = parse_kwargs(agents.UpsertAgentIn, args, kwargs)
    if isinstance(parsed, Invalid):
        return _reject_invalid(self, "hitl.upsert_agent", parsed, args, kwargs)
    answer: dict[str, Any] = in_transaction(
        lambda conn: agents.upsert_agent(conn, parsed, utcnow()))
    follow([(parsed.agent_id, "directory_changed")])  # §9: offers follow eligibility
    return answer


@app.task(name="hitl.set_agent_status", base=GuardedTask, bind=True, **RETRY)
def set_agent_status(self: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    parsed = parse_kwargs(agents.SetStatusIn, args, kwargs)
    if isinstance(parsed, Invalid):
        return _reject_invalid(self, "hitl.set_agent_status", parsed, args, kwargs)
    answer: dict[str, Any] = in_transaction(
        lambda conn: agents.set_agent_status(conn, parsed, utcnow()))
    if answer["status"] != "not_found":
        follow([(parsed.agent_id, "status_changed")])  # §9: offers follow eligibility
    return answer


@app.task(name="hitl.remove_agent", base=GuardedTask, bind=True, **RETRY)
def remove_agent(self: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    parsed = parse_kwargs(agents.RemoveAgentIn, args, kwargs)
    if isinstance(parsed, Invalid):
        return _reject_invalid(self, "hitl.remove_agent", parsed, args, kwargs)
    answer: dict[str, Any]
    effects: Effects
    answer, effects = in_transaction(lambda conn: agents.remove_agent(conn, parsed, utcnow()))
    after_commit(effects)
    return answer


@app.task(name="hitl.release", base=GuardedTask, bind=True, **RETRY)
def release(self: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    parsed = parse_kwargs(agents.ReleaseIn, args, kwargs)
    if isinstance(parsed, Invalid):
        dead_letter("hitl.release", self.request.id, args, kwargs, parsed.message)
        conversation_id = kwargs.get("conversation_id")
        return {"conversation_id": conversation_id if isinstance(conversation_id, str) else None,
                "claimed_by": None, "error": {"code": "invalid_request",
                                              "message": parsed.message,
                                              "fields": parsed.fields}}
    answer: dict[str, Any]
    released: list[str]
    answer, released = in_transaction(lambda conn: agents.release(conn, parsed, utcnow()))
    follow([(agent_id, "slot_freed") for agent_id in released])  # §9: a freed slot
    return answer
