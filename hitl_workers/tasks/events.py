"""``hitl.claim``, ``hitl.reject``, ``hitl.close`` (queue ``hitl.events``, docs/contract.md §3)."""

from __future__ import annotations

from typing import Any

from hitl_workers.app import app
from hitl_workers.clock import utcnow
from hitl_workers.services import agent_events
from hitl_workers.services.agent_events import Action
from hitl_workers.tasks.common import RETRY, after_commit, dead_letter, in_transaction
from hitl_workers.tasks.guard import GuardedTask
from hitl_workers.tasks.routing import follow


def _handle(task: Any, action: Action, args: tuple[Any, ...], kwargs: dict[str, Any]
            ) -> dict[str, Any]:
    parsed = agent_events.parse_event(args, kwargs)
    if not isinstance(parsed, agent_events.AgentEventIn):
        dead_letter(f"hitl.{action}", task.request.id, args, kwargs, parsed.message)
        return agent_events.invalid_result(parsed, kwargs.get("execution_id"))
    answer, effects = in_transaction(
        lambda conn: agent_events.handle_event(conn, action, parsed, utcnow()))
    after_commit(effects)
    follow(effects.reassess)
    return answer


@app.task(name="hitl.claim", base=GuardedTask, bind=True, **RETRY)
def claim(self: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    return _handle(self, "claim", args, kwargs)


@app.task(name="hitl.reject", base=GuardedTask, bind=True, **RETRY)
def reject(self: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    return _handle(self, "reject", args, kwargs)


@app.task(name="hitl.close", base=GuardedTask, bind=True, **RETRY)
def close(self: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    return _handle(self, "close", args, kwargs)
