"""Wake-ups that come late, early, twice or never, and deadlines far beyond the horizon.

The system under test runs with a timer horizon of 2 s and a Redis visibility timeout of 3 s,
so that "a timeout of days" and "a wake-up held longer than the visibility timeout" both
happen within seconds.
"""

from __future__ import annotations

import time

import pytest

from hitl_workers.ops.processes import ALL_QUEUES
from hitl_workers.services.effects import timer_task_id
from tests.faults.harness import (
    INTERVAL_S,
    Report,
    Step,
    assert_each_exits_once_on_time,
    dispatch,
    redeliver_unacked,
    utc_now,
    wait_until,
)

HORIZON_S = 2.0
VISIBILITY_S = 3.0
SLACK_S = 1.0
"""Beyond one reconcile interval: the time to fire and commit, and a loaded CI machine."""

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fx(fault_system):
    return fault_system(
        workers={"wakeups-w": (ALL_QUEUES, 4)},
        env={"HITL_TIMER_HORIZON_S": str(HORIZON_S),
             "HITL_VISIBILITY_TIMEOUT_S": str(VISIBILITY_S)})


def _fire_results(fx, task_id: str) -> list[str]:
    return [e.get("result") for e in fx.events.of(task_id, "task-succeeded")]


def test_a_timeout_far_beyond_the_horizon_is_armed_late_and_fires_once_on_time(fx):
    # Given steps whose deadlines lie four times the horizon away
    steps = [Step("fx-long-timeout-" + fx.team[-8:], None, 8.0),
             Step("fx-long-countdown-" + fx.team[-8:], 7.0, 9.0)]
    dispatch(fx.app, steps, fx.team, fx.listener.reply_to)
    ids = [s.execution_id for s in steps]
    # Then no wake-up is armed at dispatch: the deadlines wait in the database
    assert all(t.armed_at is None for kinds in fx.db.timers(ids).values()
               for t in kinds.values())
    # And each fires once, on time
    report = Report("long_wait")
    assert_each_exits_once_on_time(fx.db, fx.listener, steps, report, slack_s=SLACK_S)
    # And its wake-up was armed by the reconciler once the deadline entered the horizon
    for step in steps:
        kind = "countdown" if step.countdown_s else "timeout"
        timer = fx.db.timers([step.execution_id])[step.execution_id][kind]
        armed_before_s = (timer.due_at - timer.armed_at).total_seconds()
        assert HORIZON_S - INTERVAL_S - SLACK_S <= armed_before_s <= HORIZON_S, armed_before_s
        # and the wake-up ran (it fired the deadline, or found the reconciler had just done so)
        results = _fire_results(fx, timer_task_id(step.execution_id, kind))
        assert results and set(results) <= {"'fired'", "'stale'", "'early'"}, results


def test_a_wake_up_redelivered_after_the_visibility_timeout_fires_once(fx):
    # Given a step whose 7 s timeout is beyond the horizon, and a wake-up for it published
    # now (as a horizon longer than the visibility timeout would): a worker holds it unacked
    step = Step("fx-redelivered-" + fx.team[-8:], None, 7.0)
    dispatch(fx.app, [step], fx.team, fx.listener.reply_to)
    due = fx.db.timers([step.execution_id])[step.execution_id]["timeout"].due_at
    task_id = timer_task_id(step.execution_id, "timeout")
    fx.app.send_task("hitl.fire_timer", kwargs={"execution_id": step.execution_id,
                                                "kind": "timeout"},
                     eta=due, task_id=task_id, queue="hitl.timers")
    wait_until(lambda: fx.events.of(task_id, "task-received"), 10, "the worker to hold it")
    # When it outlives the visibility timeout and the broker's sweep redelivers it
    time.sleep(VISIBILITY_S + 0.5)
    assert redeliver_unacked(fx.redis.url(0), VISIBILITY_S) >= 1
    wait_until(lambda: len(fx.events.of(task_id, "task-received")) >= 2, 10,
               "the redelivered copy to reach a worker")
    # Then the step still exits once, on time
    assert_each_exits_once_on_time(fx.db, fx.listener, [step], Report("redelivered_wake_up"),
                                   slack_s=SLACK_S)
    # And every copy ran (the held one, the redelivered one, the reconciler's own); at most
    # one of them fired (none, when the reconciler's tick came first)
    wait_until(lambda: len(_fire_results(fx, task_id)) >= 2, 10, "both copies to run")
    results = _fire_results(fx, task_id)
    assert results.count("'fired'") <= 1 and set(results) <= {"'fired'", "'stale'", "'early'"}
    assert not fx.events.of(task_id, "task-failed")
    assert utc_now() > due


def test_an_early_wake_up_re_arms_under_the_same_id_and_fires_once(fx):
    # Given a step whose wake-up is armed (4 s timeout, armed 2 s before it)
    step = Step("fx-early-" + fx.team[-8:], None, 4.0)
    dispatch(fx.app, [step], fx.team, fx.listener.reply_to)
    wait_until(lambda: fx.db.timers([step.execution_id])[step.execution_id]["timeout"]
               .armed_at, 10, "the wake-up to be armed")
    # When a copy of it with the same task id arrives early, while the armed one is held
    task_id = timer_task_id(step.execution_id, "timeout")
    fx.app.send_task("hitl.fire_timer", kwargs={"execution_id": step.execution_id,
                                                "kind": "timeout"},
                     task_id=task_id, queue="hitl.timers")
    wait_until(lambda: "'early'" in _fire_results(fx, task_id), 10, "the early copy to run")
    # Then it re-armed itself under the same id, and the step exits once, on time
    assert_each_exits_once_on_time(fx.db, fx.listener, [step], Report("early_wake_up"),
                                   slack_s=SLACK_S)
    wait_until(lambda: len(_fire_results(fx, task_id)) >= 3, 10, "every copy to run")
    results = _fire_results(fx, task_id)
    assert results.count("'fired'") <= 1, results  # (none when the reconciler came first)
    assert set(results) <= {"'fired'", "'stale'", "'early'"}, results
    assert not fx.events.failures()


def test_a_lost_wake_up_is_fired_by_the_reconciler(fx):
    # Given a step whose armed wake-up is lost (revoked: the worker drops it when due)
    step = Step("fx-lost-" + fx.team[-8:], None, 3.5)
    dispatch(fx.app, [step], fx.team, fx.listener.reply_to)
    task_id = timer_task_id(step.execution_id, "timeout")
    wait_until(lambda: fx.events.of(task_id, "task-received"), 10, "the wake-up to be held")
    fx.app.control.revoke(task_id)
    # Then the reconciler fires the deadline within a reconcile interval
    assert_each_exits_once_on_time(fx.db, fx.listener, [step], Report("lost_wake_up"),
                                   slack_s=SLACK_S)
    assert not _fire_results(fx, task_id)  # the wake-up itself never ran


def test_a_late_wake_up_after_the_exit_changes_nothing(fx):
    # Given a step that its own 1.5 s timeout ended
    step = Step("fx-late-" + fx.team[-8:], None, 1.5)
    dispatch(fx.app, [step], fx.team, fx.listener.reply_to)
    assert_each_exits_once_on_time(fx.db, fx.listener, [step], Report("late_wake_up"),
                                   slack_s=SLACK_S)
    ended_at = fx.db.executions([step.execution_id])[step.execution_id].ended_at
    # When its wake-up arrives again, twice (a redelivery, a restored message)
    task_id = timer_task_id(step.execution_id, "timeout")
    runs = len(_fire_results(fx, task_id))
    for _ in range(2):
        fx.app.send_task("hitl.fire_timer", kwargs={"execution_id": step.execution_id,
                                                    "kind": "timeout"},
                         task_id=task_id, queue="hitl.timers")
    wait_until(lambda: len(_fire_results(fx, task_id)) == runs + 2, 10, "both to run")
    # Then nothing changes: the same exit, one exit message
    assert _fire_results(fx, task_id)[runs:] == ["'stale'", "'stale'"]
    time.sleep(INTERVAL_S * 2)
    row = fx.db.executions([step.execution_id])[step.execution_id]
    assert (row.state, row.exit, row.ended_at) == ("exited", "timeout", ended_at)
    assert fx.listener.count_for(step.execution_id) == 1
