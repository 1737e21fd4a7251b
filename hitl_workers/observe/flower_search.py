"""Task arguments Flower can search (a worker hook; the command that starts Flower is
:func:`hitl_workers.ops.processes.flower_cmd`).

Flower shows each task with the ``argsrepr``/``kwargsrepr`` its message carries and finds
tasks by any substring of their id, name and arguments. Every hitl task takes keyword
arguments with the ``execution_id``, timer wake-ups have the id ``hitl-timer:<kind>:<id>`` and
exit messages ``exit:<id>``, so searching an execution id finds a step's request, claims,
wake-ups and exit. Only a client that sends no ``kwargsrepr`` (one not written in Python, say)
would leave Flower blind: :func:`_readable_kwargs` fills it in on receipt.
"""

from __future__ import annotations

from typing import Any

from celery.signals import task_received
from celery.utils.saferepr import saferepr

KWARGSREPR_CHARS = 1024  # what Celery's own client sends at most
IDS_FIRST = ("execution_id", "conversation_id", "agent_id", "kind")


def readable_kwargs(kwargs: dict[str, Any]) -> str:
    """A ``kwargsrepr`` that starts with the ids, so a long request cut at
    :data:`KWARGSREPR_CHARS` still shows (and is found by) its execution id."""
    ordered = {k: kwargs[k] for k in IDS_FIRST if k in kwargs}
    ordered.update((k, v) for k, v in kwargs.items() if k not in ordered)
    return saferepr(ordered, maxlen=KWARGSREPR_CHARS)


@task_received.connect
def _readable_kwargs(request: Any = None, **_: Any) -> None:
    # Runs in the worker's main process just before it sends the task-received event that
    # Flower reads. Celery keeps the header's value in ``_kwargsrepr`` and has no setter.
    if request is None or getattr(request, "_kwargsrepr", None):
        return
    try:
        kwargs = request.kwargs
    except Exception:  # an undecodable body: the guard refuses it elsewhere
        return
    if isinstance(kwargs, dict) and kwargs:
        request._kwargsrepr = readable_kwargs(kwargs)
