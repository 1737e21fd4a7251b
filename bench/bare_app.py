"""Bare Celery, for comparison: one no-op task, the same broker, serializer, acks and pool
settings as hitl_workers (celeryconfig.py), so the ratio isolates hitl_workers' own work."""

from __future__ import annotations

import os

from celery import Celery

app = Celery("bare")
app.conf.update(
    broker_url=os.environ["HITL_BROKER_URL"],
    result_backend=os.environ["HITL_RESULT_BACKEND_URL"],
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_default_queue="bare",
)


@app.task(name="bare.noop")
def noop(**kwargs: object) -> dict[str, object]:
    return {"ok": True}


@app.task(name="bare.sleep_until")
def sleep_until(*, execution_id: str, reply_task: str | None = None,
                reply_queue: str | None = None, **kwargs: object) -> None:
    """The timer benchmarks' ETA task. Sent with ``eta``; when it runs it publishes one
    message to ``reply_queue`` — as hitl_workers publishes a step's exit — so a listener
    timestamps both at the same point: the message's arrival at the flow engine's queue.
    Without ``reply_queue`` (the memory benchmark's held tasks) it does nothing."""
    if reply_task and reply_queue:
        app.send_task(reply_task, kwargs={"execution_id": execution_id, **kwargs},
                      queue=reply_queue, task_id=f"exit:{execution_id}")
