"""The Celery app: ``celery -A hitl_workers.app worker|beat|flower``."""

from __future__ import annotations

from celery import Celery

app = Celery("hitl_workers")
app.config_from_object("celeryconfig")

import hitl_workers.tasks.agents  # noqa: E402,F401  (registers the tasks)
import hitl_workers.tasks.events  # noqa: E402,F401
import hitl_workers.tasks.requests  # noqa: E402,F401
import hitl_workers.tasks.timers  # noqa: E402,F401
import hitl_workers.worker_signals  # noqa: E402,F401
