"""A flow engine's own Celery worker for the Flower test: it runs the exit task with task events
on (``-E``), as a flow engine written with Celery would, so Flower shows the exit too.

``celery -A tests.operators.flow_engine worker -Q $OPS_FLOW_QUEUE -E``
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

from hitl_workers.ops.flow_engine import queue_for

BROKER = os.environ["HITL_BROKER_URL"]
QUEUE = os.environ["OPS_FLOW_QUEUE"]

app = Celery("flow_engine", broker=BROKER)
app.conf.update(task_queues=[queue_for(BROKER, QUEUE)], task_default_queue=QUEUE,
                accept_content=["json"], task_serializer="json",
                worker_send_task_events=True, broker_connection_retry_on_startup=True)


@app.task(name="flow.step_exited", ignore_result=True)
def step_exited(**kwargs: Any) -> str:
    return str(kwargs.get("exit"))
