"""The reconciler: bounds the damage of any lost message (docs/guarantees.md §5).

Each tick: fire overdue deadlines, arm deadlines that entered the horizon, hand never-sent
outbox rows to delivery, and write a heartbeat. Idempotent, and safe with two beats running:
overdue executions are taken with ``SKIP LOCKED``, and so are the timers to arm and the
outbox rows to re-send, so no two reconcilers take the same ones and none waits for another.

Overdue deadlines are fired in batches, one transaction per batch, each batch published as
soon as it commits. After a broker flush or with every worker down, hundreds of deadlines
can be overdue at once; one transaction each (about ten round trips and a commit apiece)
would leave the last of them late by seconds. Several reconcilers (the tick and the helpers
it asks for, see :func:`hitl_workers.tasks.timers.reconcile`) drain one backlog side by side.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.engine import Connection
from sqlalchemy.exc import OperationalError

from hitl_workers.domain import machine
from hitl_workers.services import agent_events
from hitl_workers.services.effects import Effects
from hitl_workers.services.transitions import apply
from hitl_workers.store import executions, repo
from hitl_workers.store.db import transaction
from hitl_workers.store.executions import LockedExecution

BATCH = 500
"""Timers armed, and outbox rows handed to delivery, per tick."""
FIRE_BATCH = 25
"""Overdue executions fired per transaction: enough to save most of the per-transaction
cost, few enough that a claim on one of them waits a fraction of a second at most (it loses
anyway: the step is overdue)."""

log = logging.getLogger(__name__)


@dataclass
class Tick:
    fired: int = 0
    batches: int = 0
    backlog: bool = False
    """The first batch was full: more was overdue than one batch (helpers may drain it)."""
    armed: int = 0
    stale_outbox: list[int] = field(default_factory=list)
    effects: Effects = field(default_factory=Effects)

    def summary(self) -> dict[str, int]:
        return {"fired": self.fired, "armed": self.armed, "resent": len(self.stale_outbox)}


def fire_overdue(clock: Callable[[], datetime], publish: Callable[[Effects], Any], *,
                 budget_s: float, batch: int = FIRE_BATCH,
                 on_backlog: Callable[[], Any] | None = None) -> Tick:
    """Fire overdue deadlines batch by batch until none is left or ``budget_s`` has passed.

    ``publish`` gets each batch's effects right after its commit, so the first exits are on
    their way while later batches are still being fired. ``on_backlog`` is called once when
    the first batch comes back full: more is overdue than one batch, and helpers could share
    the work.
    """
    tick = Tick()
    started = time.monotonic()
    while True:
        effects = Effects()
        try:
            with transaction() as conn:
                rows = [LockedExecution.from_row(r)
                        for r in repo.lock_overdue(conn, clock(), batch)]
                views = executions.views(conn, rows)
                for row in rows:
                    tick.fired += _fire(conn, row, views[row.execution_id], clock(), effects)
        except OperationalError:
            raise  # the database is away: the next tick tries again
        except Exception:
            # One execution that cannot be fired must not hold up every deadline behind
            # it: fire this batch again one transaction each, and leave the bad one logged.
            log.exception("reconciler: batch failed; firing it one execution at a time")
            rows = _fire_one_by_one(clock, rows, tick, effects)
        if rows:
            tick.batches += 1
            publish(effects)
        if tick.batches == 1 and len(rows) == batch:
            tick.backlog = True
            if on_backlog is not None:
                on_backlog()
        if len(rows) < batch or time.monotonic() - started > budget_s:
            return tick


def _fire(conn: Connection, row: LockedExecution, view: machine.ExecutionView, now: datetime,
          effects: Effects) -> bool:
    """Fire ``row``'s overdue deadline (its execution is locked); True when it fired."""
    kind = row.timer_kind
    assert kind is not None
    decision = machine.decide(view, machine.TimerFired(kind), now)  # type: ignore[arg-type]
    fired = apply(conn, row, view, decision, now, fired=kind)
    if decision.outcome == "early":
        fired.arm.clear()  # an overdue timer is never early; nothing to re-arm
    # (A missed sequential offer arms the next holder's offer timer: that wake-up stays.)
    effects.merge(fired)
    return decision.outcome == "fired"


def _fire_one_by_one(clock: Callable[[], datetime], rows: list[LockedExecution], tick: Tick,
                     effects: Effects) -> list[LockedExecution]:
    for row in rows:
        assert row.timer_kind is not None
        try:
            with transaction() as conn:
                outcome, fired = agent_events.fire_timer(
                    conn, row.execution_id, row.timer_kind, clock(), skip_locked=True)
        except OperationalError:
            raise
        except Exception:
            log.exception("reconciler: the %s deadline of execution %s cannot be fired",
                          row.timer_kind, row.execution_id)
            continue
        if outcome == "early":
            fired.arm.clear()
        effects.merge(fired)
        tick.fired += outcome == "fired"
    return rows


def reconcile(clock: Callable[[], datetime], publish: Callable[[Effects], Any], *,
              horizon_s: float, outbox_retry_after_s: float, budget_s: float,
              on_backlog: Callable[[], Any] | None = None) -> Tick:
    """One tick: fire overdue deadlines (publishing each batch), then arm the deadlines that
    entered the horizon, pick the outbox rows to re-send, and beat. The caller publishes
    ``tick.effects`` (the wake-ups to arm) and hands ``tick.stale_outbox`` to delivery."""
    tick = fire_overdue(clock, publish, budget_s=budget_s, on_backlog=on_backlog)
    now = clock()
    with transaction() as conn:
        to_arm = repo.claim_timers_to_arm(conn, now, now + timedelta(seconds=horizon_s), BATCH)
        tick.stale_outbox = repo.claim_stale_outbox(
            conn, now - timedelta(seconds=outbox_retry_after_s), now, BATCH)
        repo.beat(conn, "reconciler", now, {"fired": tick.fired, "armed": len(to_arm),
                                            "resent": len(tick.stale_outbox)})
    tick.armed = len(to_arm)
    tick.effects.arm.extend(to_arm)
    return tick
