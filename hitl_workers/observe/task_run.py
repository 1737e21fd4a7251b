"""Around every task a worker's pool process runs: the log context set when it starts, the
task metrics counted and the context cleared when it ends.

One receiver per Celery signal, for the two concerns: each ``send`` takes the signal's lock
and resolves its receivers' weak references, and a receiver's own call costs more than its
work in a pool process, so every task paid that four times when the log context
(:mod:`~hitl_workers.observe.task_context`) and the metrics
(:mod:`~hitl_workers.observe.metrics`) each connected their own pair (docs/benchmarks.md).
The task's start time lives in its context, so no table of running tasks is kept either.
"""

from __future__ import annotations

from typing import Any

from celery.signals import task_postrun, task_prerun

from hitl_workers.observe import metrics, task_context


@task_prerun.connect
def _started(task_id: str | None = None, task: Any = None, kwargs: Any = None,
             **_: Any) -> None:
    task_context.enter(str(task_id), str(getattr(task, "name", "")), kwargs)


@task_postrun.connect
def _finished(task_id: str | None = None, task: Any = None, retval: Any = None,
              state: str | None = None, **_: Any) -> None:
    context = task_context.current()
    if context is not None and context.task_id != str(task_id):
        context = None  # not the context this run started with: no run time to tell
    try:
        metrics.count_task_run(context, str(getattr(task, "name", "")), state, retval)
    finally:
        # The next task's lines must not carry this one's ids, even if counting failed (Celery
        # logs a receiver's exception and goes on).
        task_context.leave()
