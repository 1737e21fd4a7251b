"""The layers hold: the gateway sends tasks by name without loading the worker.

Given a fresh interpreter (nothing imported yet), when the gateway app is created and sends a
task by name, then no task module and no worker hook module has been imported: the gateway
process stays small, and a change to a task cannot break the gateway at import time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from hitl_workers.app import HOOK_MODULES, TASK_MODULES

GATEWAY_PROCESS = """
import json, sys
from hitl_workers.gateway.app import create_app
from hitl_workers.gateway import bridge, health
create_app()
result = bridge.celery_app.send_task("hitl.claim", kwargs={"execution_id": "x"})
print(json.dumps(sorted(sys.modules)))
"""


def _modules_loaded_by(code: str, tmp_path: Path) -> set[str]:
    env = {**os.environ,
           # An in-memory broker: sending needs no running service.
           "HITL_BROKER_URL": "memory://", "HITL_RESULT_BACKEND_URL": "cache+memory://",
           "HITL_DATABASE_URL": f"sqlite:///{tmp_path}/gw.db"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def test_the_gateway_sends_by_name_without_loading_tasks_or_worker_hooks(tmp_path: Path
                                                                          ) -> None:
    loaded = _modules_loaded_by(GATEWAY_PROCESS, tmp_path)
    assert "hitl_workers.app" in loaded  # it did use the Celery app
    tasks = sorted(m for m in loaded if m.startswith("hitl_workers.tasks."))
    hooks = sorted(m for m in loaded if m in HOOK_MODULES)
    assert tasks == [], f"the gateway imported task modules: {tasks}"
    assert hooks == [], f"the gateway imported worker hooks: {hooks}"


def test_the_celery_app_imports_no_task_and_no_hook() -> None:
    loaded = _modules_loaded_by("import json, sys; import hitl_workers.app; "
                                "print(json.dumps(sorted(sys.modules)))", Path("/tmp"))
    assert not loaded & {*TASK_MODULES, *HOOK_MODULES}


def test_a_task_module_can_be_imported_first() -> None:
    # The old circle broke when a script entered through a task module before the app.
    loaded = _modules_loaded_by("import json, sys; import hitl_workers.tasks.common; "
                                "print(json.dumps(sorted(sys.modules)))", Path("/tmp"))
    assert "hitl_workers.app" in loaded
