"""Under steady load with a short retention period, the tables stop growing.

A private system (its own Redis and database) with ``HITL_RETENTION_DAYS`` set to a few
seconds and beat sending ``hitl.purge`` every second. Steps arrive at a steady rate for a while
— each offered to three agents, half of them claimed (a stored agent-event answer each), the
rest ending by their one-second timeout — and every table is counted each second. The counts
level off at about (rate × (step life + period + purge interval)) instead of growing with the
number of steps sent, and fall back near zero once the load stops.
"""

from __future__ import annotations

import time
import uuid

import pytest
import sqlalchemy as sa

from tests.faults.harness import Step, step_request, wait_until

RETENTION_S = 3.0
RATE_PER_S = 5
LOAD_S = 36
TABLES = ("executions", "offers", "timers", "audit_events", "outbox", "agent_events",
          "conversations")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fx(fault_system):
    return fault_system(env={"HITL_RETENTION_DAYS": repr(RETENTION_S / 86400),
                             "HITL_RETENTION_INTERVAL_S": "1"})


def counts(fx) -> dict[str, int]:
    with fx.db.engine.connect() as conn:
        return {t: int(conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one())
                for t in TABLES}


def test_tables_stop_growing_under_steady_load(fx):
    samples: list[dict[str, int]] = []
    sent: list[str] = []
    started = time.monotonic()
    next_sample = started + 1
    previous: str | None = None
    while time.monotonic() - started < LOAD_S:
        step = Step(f"ret-{uuid.uuid4().hex[:12]}", None, 1.0)
        fx.app.send_task("hitl.request_assistance",
                         kwargs=step_request(step, fx.team, fx.listener.reply_to))
        if previous is not None and len(sent) % 2 == 0:
            fx.app.send_task("hitl.claim", kwargs={"execution_id": previous,
                                                   "agent_id": fx.agents[0],
                                                   "event_id": f"ev-{previous}"})
        previous = step.execution_id
        sent.append(step.execution_id)
        if time.monotonic() >= next_sample:
            samples.append(counts(fx))
            next_sample += 1
        time.sleep(1 / RATE_PER_S)

    thirds = len(samples) // 3
    middle, last = samples[thirds:2 * thirds], samples[2 * thirds:]
    # Everything was exercised: steps were dispatched, offered, claimed and ended
    assert len(sent) >= RATE_PER_S * LOAD_S * 0.8
    assert all(max(s[t] for s in samples) > 0 for t in TABLES), samples
    for table in TABLES:
        # Then no table grows with the number of steps sent: the last third of the run holds
        # no more rows than the middle third did (plus a margin for a slow purge tick) ...
        assert max(s[table] for s in last) <= max(s[table] for s in middle) * 1.3 + 10, (
            table, samples)
    # ... and far fewer executions than were sent
    assert max(s["executions"] for s in last) < len(sent) / 3, (len(sent), samples)

    # When the load stops, the purge catches up and the tables empty (the agents stay).
    def drained() -> dict[str, int] | None:
        now = counts(fx)
        return now if now["executions"] == 0 and now["agent_events"] == 0 else None

    left = wait_until(drained, timeout=RETENTION_S + 30, what="the purge to empty the tables")
    assert left["offers"] == left["timers"] == left["outbox"] == left["audit_events"] == 0
    assert left["conversations"] == 0
