"""Which task this process is running, and for which step execution.

Set from the task's keyword arguments when it starts (Celery's ``task_prerun``), cleared when
it ends (``task_postrun``); log lines (:mod:`hitl_workers.observe.log_format`) and metrics
(:mod:`hitl_workers.observe.metrics`) read it. Keyword arguments come from outside, so only short
strings are taken as ids.
"""

from __future__ import annotations

import dataclasses
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from celery.signals import task_postrun, task_prerun

MAX_ID_CHARS = 128


@dataclass(frozen=True)
class TaskContext:
    task_id: str
    task_name: str
    execution_id: str | None = None
    conversation_id: str | None = None

    def fields(self) -> dict[str, str]:
        """The ids to put on a log line (those that are known)."""
        found = {"task_id": self.task_id, "task_name": self.task_name,
                 "execution_id": self.execution_id, "conversation_id": self.conversation_id}
        return {k: v for k, v in found.items() if v is not None}


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
    if context.execution_id not in (None, execution_id):
        return
    _current.set(dataclasses.replace(
        context, execution_id=execution_id,
        conversation_id=context.conversation_id or short_id(conversation_id)))


def enter(task_id: str, task_name: str, kwargs: Any) -> None:
    kwargs = kwargs if isinstance(kwargs, dict) else {}
    _current.set(TaskContext(task_id=task_id, task_name=task_name,
                             execution_id=short_id(kwargs.get("execution_id")),
                             conversation_id=short_id(kwargs.get("conversation_id"))))


def leave() -> None:
    _current.set(None)


@task_prerun.connect
def _on_prerun(task_id: str | None = None, task: Any = None, kwargs: Any = None,
               **_: Any) -> None:
    enter(str(task_id), str(getattr(task, "name", "")), kwargs)


@task_postrun.connect
def _on_postrun(**_: Any) -> None:
    leave()
