"""The Celery app: ``celery -A hitl_workers.app worker|beat|flower``."""

from __future__ import annotations

from celery import Celery

app = Celery("hitl_workers")
app.config_from_object("celeryconfig")

# The tasks, then the worker hooks: schema check and fresh engines (worker_signals), task ids
# on log lines (logs), business metrics (metrics), arguments Flower can search (flower).
import hitl_workers.flower  # noqa: E402,F401
import hitl_workers.logs  # noqa: E402,F401
import hitl_workers.metrics  # noqa: E402,F401
import hitl_workers.tasks.agents  # noqa: E402,F401  (registers the tasks)
import hitl_workers.tasks.events  # noqa: E402,F401
import hitl_workers.tasks.requests  # noqa: E402,F401
import hitl_workers.tasks.timers  # noqa: E402,F401
import hitl_workers.worker_signals  # noqa: E402,F401
