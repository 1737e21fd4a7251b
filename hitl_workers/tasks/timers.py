"""Deadlines and delivery: ``hitl.fire_timer``, ``hitl.reconcile`` (and its helper
``hitl.fire_overdue``), ``hitl.deliver_outbox``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy.exc import DBAPIError, OperationalError

from hitl_workers.app import app
from hitl_workers.clock import utcnow
from hitl_workers.domain.names import TASK_QUEUES
from hitl_workers.services import agent_events, delivery
from hitl_workers.services import reconcile as reconciler
from hitl_workers.services.effects import Effects
from hitl_workers.settings import get_settings
from hitl_workers.tasks.common import RETRY, after_commit, in_transaction, publisher
from hitl_workers.tasks.guard import GuardedTask
from hitl_workers.tasks.routing import follow

log = logging.getLogger(__name__)
T = TypeVar("T")


@app.task(name="hitl.fire_timer", base=GuardedTask, bind=True, ignore_result=True)
def fire_timer(self: Any, *, execution_id: str, kind: str) -> str:
    """A deadline's wake-up. Re-checks the row, so an early, late, duplicated or stale
    wake-up is harmless: early ones re-arm themselves, the rest change nothing.

    Never retried: a wake-up that cannot reach the database (PostgreSQL restarting) is a lost
    wake-up, and the reconciler fires that deadline within an interval of the database's
    return. Retries would come back all at once and fill the timer workers' pool while the
    reconciler's tick waited behind them.

    A wake-up that runs late (the timer workers are behind: a burst of deadlines, or the
    backlog after an outage) first fires every overdue deadline in batches, as the reconciler
    does, so the burst costs a few transactions instead of one each; the wake-ups behind it
    then find their deadlines already fired.
    """
    if _late(self.request.eta):
        _with_database(lambda: reconciler.fire_overdue(utcnow, _publish,
                                                       budget_s=LATE_DRAIN_S))
    # An offer timer is re-armed at each new hold: the wake-up says which hold it was for.
    due_at = _eta(self.request.eta) if kind == "offer" else None
    fired = _with_database(lambda: in_transaction(
        lambda conn: agent_events.fire_timer(conn, execution_id, kind, utcnow(),
                                             due_at=due_at)))
    if fired is None:
        return "deferred"  # the database is away: the reconciler fires it when it is back
    outcome, effects = fired
    _publish(effects)
    return outcome


def _publish(effects: Effects) -> None:
    """After commit: publish, then let a missed holder's new status (on_missed, §9) reach its
    offers of other steps, as any status change does (services/routing.py)."""
    after_commit(effects)
    follow(effects.reassess)


LATE_DRAIN_S = 1.0
"""How long a late wake-up drains overdue deadlines before it handles its own."""


def _eta(eta: Any) -> datetime | None:
    """The wake-up's ETA as an aware datetime (None: none, or unreadable)."""
    due: datetime | None = eta if isinstance(eta, datetime) else None
    if due is None and isinstance(eta, str) and eta:
        try:
            due = datetime.fromisoformat(eta)
        except ValueError:
            return None
    if due is None:
        return None
    return due.replace(tzinfo=UTC) if due.tzinfo is None else due


def _late(eta: str | None) -> bool:
    due = _eta(eta)
    if due is None:
        return False
    return (utcnow() - due).total_seconds() > get_settings().reconcile_interval_s


@app.task(name="hitl.reconcile", base=GuardedTask, ignore_result=True)
def reconcile() -> dict[str, int]:
    """One reconciler tick; beat sends one every ``HITL_RECONCILE_INTERVAL_S``.

    Never retried: a tick that fails (PostgreSQL restarting, the broker refusing a publish)
    is replaced by the next one within an interval, and retries would only pile up behind
    it on the timers queue.
    """
    settings = get_settings()
    tick = _with_database(lambda: reconciler.reconcile(
        utcnow, _publish, horizon_s=settings.timer_horizon_s,
        outbox_retry_after_s=settings.outbox_retry_after_s, budget_s=_budget_s(),
        on_backlog=_ask_for_helpers))
    if tick is None:
        return {"fired": 0, "armed": 0, "resent": 0}
    after_commit(tick.effects)
    if tick.stale_outbox:
        # Delivery runs elsewhere: a notification Redis that hangs must not stall the
        # reconciler's firing of deadlines.
        app.send_task("hitl.deliver_outbox", kwargs={"ids": tick.stale_outbox},
                      queue=TASK_QUEUES["hitl.deliver_outbox"])
    if tick.fired or tick.stale_outbox:
        log.info("reconciler: %s", tick.summary())
    return tick.summary()


@app.task(name="hitl.fire_overdue", ignore_result=True)
def fire_overdue() -> dict[str, int]:
    """A helper the reconciler asks for when many deadlines are overdue at once (after a
    broker flush, or with every worker down for a while): it drains the same backlog side by
    side with the tick. ``SKIP LOCKED`` gives each helper different executions; a helper that
    finds nothing left ends at once."""
    tick = _with_database(lambda: reconciler.fire_overdue(utcnow, _publish,
                                                          budget_s=_budget_s()))
    if tick is not None and tick.fired:
        log.info("reconciler helper: fired %d", tick.fired)
    return {"fired": tick.fired if tick is not None else 0}


def _budget_s() -> float:
    # A tick drains a backlog for this long at most, then arms, re-sends and beats; the
    # following ticks (and helpers) go on with what is left.
    return max(5.0, 5 * get_settings().reconcile_interval_s)


def _ask_for_helpers() -> None:
    settings = get_settings()
    for _ in range(settings.reconcile_helpers):
        app.send_task("hitl.fire_overdue", queue=TASK_QUEUES["hitl.fire_overdue"],
                      expires=max(5.0, settings.reconcile_interval_s * 5))


def _with_database(work: Callable[[], T]) -> T | None:
    """``work()``; None when the database is unreachable (logged; the reconciler's next tick
    does what was left undone).

    A pooled connection that died with a PostgreSQL restart fails its first statement and
    SQLAlchemy invalidates the pool: one immediate second attempt gets a fresh connection.
    """
    for attempt in (1, 2):
        try:
            return work()
        except DBAPIError as exc:
            if attempt == 1 and exc.connection_invalidated:
                continue
            if not isinstance(exc, OperationalError):
                raise
            log.warning("database unavailable (%s); the reconciler's next tick tries again",
                        str(exc.orig).strip().splitlines()[0] if exc.orig else exc)
            return None
    return None


@app.task(name="hitl.deliver_outbox", base=GuardedTask, ignore_result=True, **RETRY)
def deliver_outbox(*, ids: list[int]) -> dict[str, int]:
    sent, failed = delivery.publish_ids(ids, publisher(), utcnow)
    return {"sent": sent, "failed": failed}
