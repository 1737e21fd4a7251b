"""Heartbeat and ready files for Celery worker containers: cheap liveness and readiness probes.

Loaded into a worker with ``celery -A hitl_workers.app worker ... --include hitl_worker_probe``
(the image puts this directory on ``PYTHONPATH``); ``hitl-worker-probe`` reads the files.

Why files: ``celery inspect ping`` starts a Python process that imports the whole app and makes
a broadcast round trip through the broker on every probe, for every pod. A file touched by the
worker's own event loop says the same thing — "this worker's consumer is still turning" — and
the probe only compares two timestamps.

- The heartbeat file is touched on every worker heartbeat (every 2 s, sent from the consumer's
  event loop). It goes stale when that loop is wedged or has no broker connection.
- The ready file exists from ``worker_ready`` (consumer started) until Celery announces its
  shutdown (``worker_shutting_down``; under ``REMAP_SIGTERM=SIGQUIT`` that comes after the soft
  shutdown wait). Liveness reads only the heartbeat, so it never cuts a shutdown short.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from celery.signals import heartbeat_sent, worker_ready, worker_shutting_down

HEARTBEAT_FILE = Path(os.environ.get("HITL_WORKER_HEARTBEAT_FILE", "/tmp/hitl-worker.heartbeat"))
READY_FILE = Path(os.environ.get("HITL_WORKER_READY_FILE", "/tmp/hitl-worker.ready"))


@worker_ready.connect
def _on_ready(**_: Any) -> None:
    # A probe file that cannot be written must never disturb the worker: the probe then fails
    # and says why, which is the right outcome.
    with contextlib.suppress(OSError):
        HEARTBEAT_FILE.touch()
        READY_FILE.touch()


@heartbeat_sent.connect
def _on_heartbeat(**_: Any) -> None:
    with contextlib.suppress(OSError):
        HEARTBEAT_FILE.touch()


@worker_shutting_down.connect
def _on_shutting_down(**_: Any) -> None:
    with contextlib.suppress(OSError):
        READY_FILE.unlink(missing_ok=True)
