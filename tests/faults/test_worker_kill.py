"""``kill -9`` of every worker while a few hundred steps wait on their deadlines.

The workers hold the armed wake-ups in memory (unacked in Redis until the visibility
timeout, far beyond this test): killing them loses every one. Two beats run throughout, so
two reconcilers share the work. The workers are restarted once half of the deadlines have
passed, so a backlog awaits them. After the restart, every step must exit exactly once, and
none later than its deadline (or the restart, for deadlines that passed while no worker
ran) + one reconcile interval + SLACK_S.
"""

from __future__ import annotations

import pytest

from tests.faults.harness import (
    DRAIN_S_PER_DEADLINE,
    Report,
    assert_each_exits_once_on_time,
    deadlines_between,
    dispatch,
    dispatch_rate,
    mixed_steps,
    overdue,
    utc_now,
    wait_until,
)

STEPS = 240
SLACK_S = 1.5
"""Beyond one reconcile interval: the restarted workers' first transactions, and a loaded
CI machine; plus DRAIN_S_PER_DEADLINE for each deadline that passed while no worker ran
(they are all overdue at once when the workers return)."""
WORKERS = {"kill-requests": (("hitl.requests", "hitl.events"), 3),
           "kill-timers": (("hitl.timers", "hitl.outbox"), 2)}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fx(fault_system):
    return fault_system(workers=WORKERS, beats=2)


def test_every_step_exits_once_on_time_after_every_worker_is_killed(fx):
    # Given 240 steps waiting on countdowns and timeouts of 2-8 s (after the last dispatch)
    lead_s = dispatch_rate(fx.app, fx.team, fx.listener.reply_to)
    steps = mixed_steps(STEPS, 2.0, 8.0, lead_s=lead_s)
    dispatch_s = dispatch(fx.app, steps, fx.team, fx.listener.reply_to)
    # When every worker process is killed (kill -9, whole process group), and restarted once
    # half of the deadlines have passed
    fx.system.kill(WORKERS)
    killed_at = utc_now()
    wait_until(lambda: overdue(fx.db, utc_now()) >= STEPS // 2, 60, "half the deadlines")
    fx.system.restart_workers(WORKERS)
    recovered_at = utc_now()
    backlog = deadlines_between(fx.db, steps, killed_at, recovered_at)
    # Then every step exits exactly once, on time from the moment the workers were back
    slack_s = SLACK_S + DRAIN_S_PER_DEADLINE * backlog
    report = Report("worker_kill", extra={
        "dispatch_s": round(dispatch_s, 2), "lead_s_per_step": round(lead_s, 3),
        "workers_down_s": round((recovered_at - killed_at).total_seconds(), 2),
        "deadlines_while_down": backlog, "slack_s": round(slack_s, 2)})
    assert_each_exits_once_on_time(fx.db, fx.listener, steps, report, slack_s=slack_s,
                                   recovered_at=recovered_at)
    assert backlog >= STEPS // 3  # the test did take wake-ups away
