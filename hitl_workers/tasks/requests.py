"""``hitl.request_assistance`` and ``hitl.cancel`` (queue ``hitl.requests``)."""

from __future__ import annotations

from typing import Any

from hitl_workers.app import app
from hitl_workers.clock import utcnow
from hitl_workers.services import agent_events, dispatch
from hitl_workers.settings import Settings, get_settings
from hitl_workers.tasks.common import RETRY, after_commit, dead_letter, in_transaction
from hitl_workers.tasks.guard import GuardedTask

_defaults_of: tuple[Settings, dispatch.Defaults] | None = None


def _defaults() -> dispatch.Defaults:
    """What a request leaves out, from the settings. Built once per settings object (they are
    read once per process): the webhook policy parses its host list each time it is built,
    a few microseconds on every request otherwise."""
    global _defaults_of
    settings = get_settings()
    if _defaults_of is None or _defaults_of[0] is not settings:
        _defaults_of = (settings, dispatch.Defaults(
            settings.default_reply_task, settings.default_reply_queue,
            settings.timer_horizon_s, settings.webhook_policy()))
    return _defaults_of[1]


@app.task(name="hitl.request_assistance", base=GuardedTask, bind=True, **RETRY)
def request_assistance(self: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Start a step execution (docs/contract.md §1). Bad input is recorded and answered, never
    raised: a worker must not crash, nor block the requests behind it, on a garbage payload."""
    defaults = _defaults()
    answer, effects = in_transaction(lambda conn: dispatch.submit(
        conn, args, kwargs, task_id=self.request.id, now=utcnow(), defaults=defaults))
    after_commit(effects)
    return answer


@app.task(name="hitl.cancel", base=GuardedTask, bind=True, **RETRY)
def cancel(self: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """The flow engine gives up: cancelled, notifications withdrawn, no exit (§4)."""
    parsed = agent_events.parse_cancel(args, kwargs)
    if not isinstance(parsed, agent_events.CancelIn):
        dead_letter("hitl.cancel", self.request.id, args, kwargs, parsed.message)
        return agent_events.invalid_result(parsed, kwargs.get("execution_id"))
    answer, effects = in_transaction(
        lambda conn: agent_events.handle_cancel(conn, parsed, utcnow()))
    after_commit(effects)
    return answer
