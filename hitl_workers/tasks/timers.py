"""Deadlines and delivery: ``hitl.fire_timer``, ``hitl.reconcile``, ``hitl.deliver_outbox``."""

from __future__ import annotations

import logging
from typing import Any

from hitl_workers.app import app
from hitl_workers.clock import utcnow
from hitl_workers.services import agent_events, delivery
from hitl_workers.services import reconcile as reconciler
from hitl_workers.settings import get_settings
from hitl_workers.tasks.common import RETRY, after_commit, in_transaction, publisher
from hitl_workers.tasks.guard import GuardedTask

log = logging.getLogger(__name__)


@app.task(name="hitl.fire_timer", base=GuardedTask, bind=True, ignore_result=True, **RETRY)
def fire_timer(self: Any, *, execution_id: str, kind: str) -> str:
    """A deadline's wake-up. Re-checks the row, so an early, late, duplicated or stale
    wake-up is harmless: early ones re-arm themselves, the rest change nothing."""
    outcome, effects = in_transaction(
        lambda conn: agent_events.fire_timer(conn, execution_id, kind, utcnow()))
    after_commit(effects)
    return outcome


@app.task(name="hitl.reconcile", base=GuardedTask, ignore_result=True, **RETRY)
def reconcile() -> dict[str, int]:
    settings = get_settings()
    tick = reconciler.reconcile(utcnow, horizon_s=settings.timer_horizon_s,
                                outbox_retry_after_s=settings.outbox_retry_after_s)
    after_commit(tick.effects)
    if tick.stale_outbox:
        # Delivery runs elsewhere: a notification Redis that hangs must not stall the
        # reconciler's firing of deadlines.
        app.send_task("hitl.deliver_outbox", kwargs={"ids": tick.stale_outbox},
                      queue="hitl.outbox")
    if tick.fired or tick.stale_outbox:
        log.info("reconciler: %s", tick.summary())
    return tick.summary()


@app.task(name="hitl.deliver_outbox", base=GuardedTask, ignore_result=True, **RETRY)
def deliver_outbox(*, ids: list[int]) -> dict[str, int]:
    sent, failed = delivery.publish_ids(ids, publisher(), utcnow)
    return {"sent": sent, "failed": failed}
