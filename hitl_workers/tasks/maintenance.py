"""``hitl.purge``: retention, on beat (queue ``hitl.timers``)."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from hitl_workers.app import app
from hitl_workers.clock import utcnow
from hitl_workers.notify.streams import StreamJanitor
from hitl_workers.services import retention
from hitl_workers.settings import get_settings
from hitl_workers.tasks.common import publisher
from hitl_workers.tasks.guard import GuardedTask

log = logging.getLogger(__name__)

PURGE_BUDGET_S = 2.0
"""A tick deletes for this long at most, so it never holds a timer worker's slot for long;
a backlog (the first run on an old database) is worked off over the following ticks."""


@app.task(name="hitl.purge", base=GuardedTask, ignore_result=True)
def purge() -> dict[str, Any]:
    """Delete what ended more than ``HITL_RETENTION_DAYS`` ago (0 keeps everything).

    Never retried: the next tick does what this one left undone.
    """
    days = get_settings().retention_days
    if days <= 0:
        return {}
    policy = retention.Policy(keep_for=timedelta(days=days), budget_s=PURGE_BUDGET_S)
    purged = retention.purge(utcnow, policy, StreamJanitor(publisher().streams.client))
    if purged.total:
        log.info("retention: deleted %s", purged.rows)
    return purged.rows
