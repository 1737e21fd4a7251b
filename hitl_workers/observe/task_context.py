"""Which task this process is running, and for which step execution.

Set from the task's keyword arguments when it starts, cleared when it ends (Celery's
``task_prerun`` and ``task_postrun``, received in :mod:`hitl_workers.observe.task_run`); log
lines (:mod:`hitl_workers.observe.log_format`) and metrics (:mod:`hitl_workers.observe.metrics`)
read it. Keyword arguments come from outside, so only short strings are taken as ids.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

MAX_ID_CHARS = 128


# Mutable and slotted, not frozen: one is made for every task a pool process runs and most are
# filled in once more by learn(); a frozen dataclass's __init__ and dataclasses.replace() cost
# about 25 µs a task there (docs/benchmarks.md). Each task run gets a new object, so changing
# one in place is never seen by another task.
@dataclass(slots=True)
class TaskContext:
    task_id: str
    task_name: str
    execution_id: str | None = None
    conversation_id: str | None = None
    started: float = 0.0
    """``time.perf_counter()`` when the task started: its run time for the metrics."""

    def fields(self) -> dict[str, str]:
        """The ids to put on a log line (those that are known)."""
        found = {"task_id": self.task_id, "task_name": self.task_name}
        if self.execution_id is not None:
            found["execution_id"] = self.execution_id
        if self.conversation_id is not None:
            found["conversation_id"] = self.conversation_id
        return found


_current: ContextVar[TaskContext | None] = ContextVar("hitl_task", default=None)


def current() -> TaskContext | None:
    return _current.get()


def short_id(value: Any) -> str | None:
    return value if isinstance(value, str) and 0 < len(value) <= MAX_ID_CHARS else None


def learn(execution_id: str, conversation_id: str | None) -> None:
    """Fill in the ids a task found out by itself (a claim sent with only a conversation id,
    a wake-up that names no conversation).

    Only for a task about one execution: a task whose arguments named none (the reconciler,
    which fires many) keeps its lines free of ids that belong to just one of them.
    """
    context = _current.get()
    if context is None or (context.execution_id is None and context.conversation_id is None):
        return
    if context.execution_id is None:
        context.execution_id = execution_id
    elif context.execution_id != execution_id:
        return
    if context.conversation_id is None:
        context.conversation_id = short_id(conversation_id)


def enter(task_id: str, task_name: str, kwargs: Any) -> TaskContext:
    if isinstance(kwargs, dict):
        execution_id = short_id(kwargs.get("execution_id"))
        conversation_id = short_id(kwargs.get("conversation_id"))
    else:
        execution_id = conversation_id = None
    context = TaskContext(task_id, task_name, execution_id, conversation_id,
                          time.perf_counter())
    _current.set(context)
    return context


def leave() -> None:
    _current.set(None)
