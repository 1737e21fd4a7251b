"""``/healthz``: can the gateway reach what it needs? Each check is bounded in time."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis

from hitl_workers.app import app as celery_app
from hitl_workers.store.db import ping, read_only

CHECK_TIMEOUT_S = 3.0


def _database() -> None:
    with read_only() as conn:
        ping(conn)


def _broker() -> None:
    # A fresh connection each time: the check must see the broker as a new client would.
    with celery_app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, interval_start=0.2, interval_step=0.2,
                               timeout=CHECK_TIMEOUT_S)


async def _run(check: Callable[[], Awaitable[Any]]) -> str:
    try:
        await asyncio.wait_for(check(), CHECK_TIMEOUT_S)
    except TimeoutError:
        return f"no answer within {CHECK_TIMEOUT_S:g} s"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"[:300]
    return "ok"


async def check_all(notifications: aioredis.Redis) -> dict[str, str]:
    names = ("database", "broker", "notifications")
    results = await asyncio.gather(
        _run(lambda: asyncio.to_thread(_database)),
        _run(lambda: asyncio.to_thread(_broker)),
        _run(notifications.ping),
    )
    return dict(zip(names, results, strict=True))
