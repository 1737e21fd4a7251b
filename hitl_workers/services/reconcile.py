"""The reconciler: bounds the damage of any lost message (DESIGN.md §2).

Each tick: fire overdue deadlines, arm deadlines that entered the horizon, hand never-sent
outbox rows to delivery, and write a heartbeat. Idempotent, and safe with two beats running:
overdue timers are fired under ``SKIP LOCKED`` execution locks, arming and outbox rows are
claimed with ``SKIP LOCKED`` so no two reconcilers take the same ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from hitl_workers.services.agent_events import fire_timer
from hitl_workers.services.effects import Effects
from hitl_workers.store import repo
from hitl_workers.store.db import transaction

BATCH = 500


@dataclass
class Tick:
    fired: int = 0
    armed: int = 0
    stale_outbox: list[int] = field(default_factory=list)
    effects: Effects = field(default_factory=Effects)

    def summary(self) -> dict[str, int]:
        return {"fired": self.fired, "armed": self.armed, "resent": len(self.stale_outbox)}


def reconcile(clock: Callable[[], datetime], *, horizon_s: float, outbox_retry_after_s: float
              ) -> Tick:
    tick = Tick()
    now = clock()
    with transaction() as conn:
        overdue = repo.overdue_timers(conn, now, BATCH)
    for execution_id, kind in overdue:
        # One short transaction per deadline: a claim holding one execution's lock never
        # delays the others, and SKIP LOCKED leaves a held one to whoever holds it.
        with transaction() as conn:
            outcome, effects = fire_timer(conn, execution_id, kind, clock(), skip_locked=True)
        if outcome == "fired":
            tick.fired += 1
        effects.arm.clear()  # an overdue timer is never early; nothing to re-arm
        tick.effects.merge(effects)

    now = clock()
    with transaction() as conn:
        to_arm = repo.claim_timers_to_arm(conn, now, now + timedelta(seconds=horizon_s), BATCH)
        tick.stale_outbox = repo.claim_stale_outbox(
            conn, now - timedelta(seconds=outbox_retry_after_s), now, BATCH)
        repo.beat(conn, "reconciler", now, {"overdue": len(overdue), "armed": len(to_arm),
                                            "resent": len(tick.stale_outbox)})
    tick.armed = len(to_arm)
    tick.effects.arm.extend(to_arm)
    return tick
