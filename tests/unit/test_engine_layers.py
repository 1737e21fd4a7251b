"""The engine's layers (docs/architecture.md, services free of Celery): use cases and the
store import nothing that connects Celery signals; their observations travel in ``Effects``."""

from __future__ import annotations

import subprocess
import sys

SERVICES_AND_STORE = [
    "hitl_workers.services.agent_events", "hitl_workers.services.agents",
    "hitl_workers.services.delivery", "hitl_workers.services.dispatch",
    "hitl_workers.services.reconcile", "hitl_workers.services.transitions",
    "hitl_workers.store.repo", "hitl_workers.store.executions",
    "hitl_workers.store.dispatching", "hitl_workers.store.wire",
]
CELERY_SIDE = ("celery", "hitl_workers.app", "hitl_workers.metrics", "hitl_workers.taskcontext",
               "hitl_workers.logs", "hitl_workers.worker_signals", "hitl_workers.tasks")


def test_services_and_store_import_nothing_of_celery():
    code = ("import sys\n" + "".join(f"import {m}\n" for m in SERVICES_AND_STORE)
            + f"print(sorted(m for m in sys.modules if m.split('.')[0] == 'celery' "
              f"or m.startswith({CELERY_SIDE!r})))")
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True).stdout.strip()
    assert found == "[]"
