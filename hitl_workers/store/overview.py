"""What an operator asks the database first: how much is waiting, late or stuck.

Read-only, a handful of indexed aggregate queries, shared by ``hitl-workers status`` and the
Prometheus gauges computed at scrape time (:mod:`hitl_workers.observe.metrics`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from hitl_workers.store.db import is_postgres
from hitl_workers.store.tables import dead_letters, executions, heartbeats, outbox, timers

RECONCILER = "reconciler"
STATEMENT_TIMEOUT_MS = 3000


@dataclass(frozen=True)
class Overview:
    at: datetime
    waiting: int = 0
    oldest_waiting_id: str | None = None
    oldest_waiting_since: datetime | None = None
    timers_pending: dict[str, int] = field(default_factory=dict)
    """Pending deadlines by kind (countdown, timeout)."""
    timers_overdue: int = 0
    """Pending deadlines already due (a wake-up or the reconciler should take them now)."""
    timers_late: int = 0
    """Pending deadlines due before ``late_before``: the reconciler is not keeping up."""
    oldest_overdue_due_at: datetime | None = None
    outbox_unsent: dict[str, int] = field(default_factory=dict)
    """Unsent outbox rows by kind (exit, notify)."""
    outbox_failing: int = 0
    """Unsent rows whose last publish failed."""
    oldest_unsent_at: datetime | None = None
    oldest_unsent_error: str | None = None
    webhooks_backing_off: int = 0
    """Webhook exits waiting out their backoff (next attempt ahead): scheduled, not stuck."""
    next_webhook_attempt_at: datetime | None = None
    webhook_error: str | None = None
    """The last error of the webhook exit backing off the longest."""
    heartbeat_at: datetime | None = None
    heartbeat_detail: dict[str, Any] | None = None
    dead_letters: int = 0
    last_dead_letter_at: datetime | None = None

    def age_s(self, since: datetime | None) -> float | None:
        return None if since is None else max(0.0, (self.at - since).total_seconds())


def load(conn: Connection, now: datetime, *, late_after_s: float) -> Overview:
    """The overview at ``now``; a pending deadline more than ``late_after_s`` past due is late.

    On PostgreSQL each statement gets a few seconds at most: a scrape or a status check must
    answer, not queue behind a lock or a slow disk.
    """
    if is_postgres(conn):
        conn.exec_driver_sql(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}")
    late_before = now - timedelta(seconds=late_after_s)

    waiting = conn.execute(
        sa.select(sa.func.count()).select_from(executions)
        .where(executions.c.state == "waiting")).scalar_one()
    oldest = conn.execute(
        sa.select(executions.c.execution_id, executions.c.dispatched_at)
        .where(executions.c.state == "waiting")
        .order_by(executions.c.dispatched_at).limit(1)).first()

    pending = timers.c.state == "pending"
    timer_counts: dict[str, int] = dict(conn.execute(
        sa.select(timers.c.kind, sa.func.count()).where(pending)
        .group_by(timers.c.kind)).tuples().all())
    overdue = conn.execute(
        sa.select(sa.func.count(), sa.func.min(timers.c.due_at),
                  sa.func.sum(sa.case((timers.c.due_at <= late_before, 1), else_=0)))
        .where(pending, timers.c.due_at <= now)).one()

    # A webhook exit backing off (its next attempt ahead) is on schedule: counted apart, so
    # that a receiver that answers 500 is not reported as the outbox being stuck.
    # (Spelled out: NOT (next_attempt_at > now) is NULL, not true, for the rows that have no
    # next attempt at all, which is nearly every row.)
    backing_off = outbox.c.next_attempt_at > now
    unsent = sa.and_(outbox.c.sent_at.is_(None),
                     sa.or_(outbox.c.next_attempt_at.is_(None), outbox.c.next_attempt_at <= now))
    outbox_counts: dict[str, int] = dict(conn.execute(
        sa.select(outbox.c.kind, sa.func.count()).where(unsent)
        .group_by(outbox.c.kind)).tuples().all())
    failing = conn.execute(
        sa.select(sa.func.count()).select_from(outbox)
        .where(unsent, outbox.c.last_error.is_not(None))).scalar_one()
    oldest_unsent = conn.execute(
        sa.select(outbox.c.created_at, outbox.c.last_error).where(unsent)
        .order_by(outbox.c.created_at).limit(1)).first()

    webhooks = conn.execute(
        sa.select(sa.func.count(), sa.func.min(outbox.c.next_attempt_at))
        .where(outbox.c.sent_at.is_(None), backing_off)).one()
    webhook_error = conn.execute(
        sa.select(outbox.c.last_error).where(outbox.c.sent_at.is_(None), backing_off)
        .order_by(outbox.c.created_at).limit(1)).scalar() if webhooks[0] else None

    beat = conn.execute(
        sa.select(heartbeats.c.beat_at, heartbeats.c.detail)
        .where(heartbeats.c.name == RECONCILER)).first()
    dead = conn.execute(
        sa.select(sa.func.count(), sa.func.max(dead_letters.c.received_at))).one()

    return Overview(
        at=now,
        waiting=waiting,
        oldest_waiting_id=oldest.execution_id if oldest else None,
        oldest_waiting_since=oldest.dispatched_at if oldest else None,
        timers_pending={str(k): int(n) for k, n in timer_counts.items()},
        timers_overdue=int(overdue[0] or 0),
        timers_late=int(overdue[2] or 0),
        oldest_overdue_due_at=overdue[1],
        outbox_unsent={str(k): int(n) for k, n in outbox_counts.items()},
        outbox_failing=failing,
        oldest_unsent_at=oldest_unsent.created_at if oldest_unsent else None,
        oldest_unsent_error=oldest_unsent.last_error if oldest_unsent else None,
        webhooks_backing_off=int(webhooks[0] or 0),
        next_webhook_attempt_at=webhooks[1],
        webhook_error=webhook_error,
        heartbeat_at=beat.beat_at if beat else None,
        heartbeat_detail=beat.detail if beat else None,
        dead_letters=int(dead[0] or 0),
        last_dead_letter_at=dead[1],
    )

