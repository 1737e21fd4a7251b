"""The Celery app: ``celery -A hitl_workers.app worker|beat|flower``.

Importing this module imports no task and no worker hook, so any process can send a task by
name through ``app`` (the gateway, ``hitl-workers status``, the simulator, the tests) without
loading the worker. A worker or beat imports the modules in ``include`` when it starts
(Celery's ``loader.init_worker``, before ``worker_init`` and before logging is set up); the
task modules import ``app`` from here, and nothing here imports them back.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

from hitl_workers.settings import get_settings

# The tasks: each module registers its tasks under their contract names (``hitl.claim`` …).
TASK_MODULES = (
    "hitl_workers.tasks.agents",
    "hitl_workers.tasks.events",
    "hitl_workers.tasks.maintenance",
    "hitl_workers.tasks.requests",
    "hitl_workers.tasks.timers",
    "hitl_workers.tasks.webhooks",
)

# The worker hooks (Celery signal handlers, hitl_workers/observe/): task arguments Flower can
# search, task ids on log lines, business metrics (task_run: the receivers around every task
# run), the schema check and fresh engines at start. Beat loads them too, so its log lines get
# the same format.
HOOK_MODULES = (
    "hitl_workers.observe.flower_search",
    "hitl_workers.observe.log_format",
    "hitl_workers.observe.metrics",
    "hitl_workers.observe.task_run",
    "hitl_workers.observe.worker_startup",
)


class HitlCelery(Celery):  # type: ignore[misc]
    """Celery, with its Redis result backend replaced by one that stores a result in one
    round trip."""

    def _get_backend(self) -> Any:
        # A Redis result backend stores each result in one round trip instead of two
        # (hitl_workers/tasks/results.py): the same JSON, key, expiry and PUBLISH. Chosen when
        # the backend is first used, from the URL configured then; any other backend (or a
        # class named explicitly) is Celery's choice as usual.
        url = self.conf.result_backend
        if (self.backend_cls is None and isinstance(url, str)
                and url.split("://", 1)[0].lower() in ("redis", "rediss")):
            from hitl_workers.tasks.results import ResultBackend

            return ResultBackend(app=self, url=url)
        return super()._get_backend()


app = HitlCelery("hitl_workers", include=[*TASK_MODULES, *HOOK_MODULES])
app.config_from_object("celeryconfig")

# Flower reads its options from FLOWER_* variables; give it the project's one, so a plain
# ``celery -A hitl_workers.app flower`` asks for the same password as the Procfile, deploy/ and
# ``hitl-workers run`` (which also pass --basic-auth). An explicit FLOWER_BASIC_AUTH wins.
_flower_auth = get_settings().flower_basic_auth
if _flower_auth:
    os.environ.setdefault("FLOWER_BASIC_AUTH", _flower_auth)
