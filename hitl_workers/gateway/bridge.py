"""Enqueue a contract task by name and wait for its result without blocking the event loop.

The gateway speaks the same Celery contract as any agent UI (``hitl.claim`` …, §3 and §5): it
never touches the execution tables itself, so every race is decided where all the others are,
in one worker transaction.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from celery.exceptions import TimeoutError as CeleryTimeout
from fastapi import HTTPException

from hitl_workers.app import app as celery_app

log = logging.getLogger(__name__)


class TaskBridge:
    """Runs the blocking ``send_task`` / ``AsyncResult.get`` pair on a thread pool of its own,
    so a slow broker or a busy worker ties up a waiting thread, never the event loop, and
    never the default executor the database reads use."""

    def __init__(self, result_timeout_s: float = 20.0, max_waiting: int = 64) -> None:
        self.result_timeout_s = result_timeout_s
        self._pool = ThreadPoolExecutor(max_workers=max_waiting,
                                        thread_name_prefix="hitl-gw-result")

    async def call(self, task: str, /, **kwargs: Any) -> dict[str, Any]:
        """``task``'s result; 503 when the broker is unreachable, 504 when no worker answered
        in time (the task may still run: retry with the same ``event_id`` to be safe)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._call, task, kwargs)

    def _call(self, task: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        try:
            result = celery_app.send_task(task, kwargs=kwargs)
        except Exception as exc:  # kombu raises its transport's own connection errors
            log.warning("could not enqueue %s: %r", task, exc)
            raise HTTPException(503, f"the broker is unavailable; {task} was not sent") from exc
        try:
            answer = result.get(timeout=self.result_timeout_s)
        except CeleryTimeout as exc:
            raise HTTPException(
                504, f"no worker answered {task} within {self.result_timeout_s:g} s; it may "
                     "still run (repeat it with the same event_id to be safe)") from exc
        except Exception as exc:
            log.warning("%s %s failed: %r", task, result.id, exc)
            raise HTTPException(502, f"{task} failed in the worker: {type(exc).__name__}"
                                ) from exc
        if not isinstance(answer, dict):
            raise HTTPException(502, f"{task} answered something unexpected: {answer!r}")
        return answer

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
