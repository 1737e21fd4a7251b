"""Worker process hooks: refuse an out-of-date schema; a fresh engine per forked child."""

from __future__ import annotations

from typing import Any

from celery.signals import worker_init, worker_process_init

from hitl_workers.settings import get_settings
from hitl_workers.store.db import reset_engine
from hitl_workers.store.migrate import SchemaOutOfDate, check_schema


@worker_init.connect
def _check_schema(**_: Any) -> None:
    try:
        check_schema(get_settings().database_url)
    except SchemaOutOfDate as exc:
        raise SystemExit(f"hitl_workers: {exc}") from None


@worker_process_init.connect
def _fresh_engine(**_: Any) -> None:
    # The parent's pooled connections must not be shared with the child.
    reset_engine()
