"""The operator's verdicts and formats, pure: ``hitl-workers status`` thresholds, metric labels,
JSON log lines, Flower-readable arguments."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta

import pytest

from hitl_workers.observe import metrics, task_context
from hitl_workers.observe.flower_search import readable_kwargs
from hitl_workers.observe.log_format import JsonFormatter, TaskContextFilter
from hitl_workers.ops import status
from hitl_workers.ops.processes import ALL_QUEUES
from hitl_workers.store.overview import Overview

NOW = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
ALL_CONSUMED = {"w@h": sorted(ALL_QUEUES)}


def healthy(**changes: object) -> status.Status:
    found = status.Status(at=NOW, reconcile_interval_s=1.0, outbox_retry_after_s=5.0,
                          database="db", broker="broker", workers=ALL_CONSUMED,
                          overview=Overview(at=NOW, heartbeat_at=NOW - timedelta(seconds=1)))
    for key, value in changes.items():
        setattr(found, key, value)
    return found


def whats(found: status.Status) -> list[str]:
    return [p.what for p in status.problems(found)]


def test_a_healthy_system_has_no_problems() -> None:
    assert status.problems(healthy()) == []


def test_no_worker_and_a_queue_nobody_consumes_are_problems() -> None:
    assert whats(healthy(workers={})) == ["no worker answered"]
    partial = healthy(workers={"w@h": ["hitl.requests", "hitl.timers", "hitl.outbox",
                                       "hitl.webhooks"]})
    (problem,) = status.problems(partial)
    assert problem.what.startswith("no worker consumes hitl.events")
    assert "-Q hitl.events" in problem.do


def test_an_unreachable_broker_is_reported_once_not_as_missing_workers() -> None:
    assert whats(healthy(broker_error="ConnectionError: refused", workers=None)) == [
        "the broker does not answer (ConnectionError: refused)"]


@pytest.mark.parametrize(("age_s", "stale"), [(None, True), (14.9, False), (15.1, True)])
def test_the_reconciler_heartbeat_is_stale_after_fifteen_seconds_at_one_per_second(
        age_s: float | None, stale: bool) -> None:
    beat = None if age_s is None else NOW - timedelta(seconds=age_s)
    found = whats(healthy(overview=Overview(at=NOW, heartbeat_at=beat)))
    assert any("reconciler" in w for w in found) == stale


def test_the_stale_threshold_follows_a_slow_reconcile_interval() -> None:
    assert status.heartbeat_stale_after_s(1.0) == 15.0
    assert status.heartbeat_stale_after_s(5.0) == 50.0


def test_late_deadlines_and_a_stuck_outbox_are_problems_with_remedies() -> None:
    ov = Overview(at=NOW, heartbeat_at=NOW, timers_late=3, timers_overdue=3,
                  oldest_overdue_due_at=NOW - timedelta(seconds=40),
                  outbox_unsent={"exit": 2}, oldest_unsent_at=NOW - timedelta(seconds=60),
                  oldest_unsent_error="ConnectionError()")
    late, stuck = status.problems(healthy(overview=ov))
    assert late.what.startswith("3 deadline(s) more than 6.0s overdue")
    assert "beat" in late.do
    assert "2 outbox message(s) unsent" in stuck.what and "ConnectionError()" in stuck.what


def test_a_young_unsent_outbox_row_is_not_a_problem() -> None:
    ov = Overview(at=NOW, heartbeat_at=NOW, outbox_unsent={"notify": 1},
                  oldest_unsent_at=NOW - timedelta(seconds=10))
    assert status.problems(healthy(overview=ov)) == []


def test_the_text_ends_with_the_verdict() -> None:
    assert status.to_text(healthy(), []).endswith("OK")
    found = healthy(workers={})
    text = status.to_text(found, status.problems(found))
    assert "1 PROBLEM(S)" in text and "do: start one" in text
    assert json.loads(status.to_json(found, status.problems(found)))["ok"] is False


@pytest.mark.parametrize(("exit", "merge_field", "reason"), [
    ("not_claimed", {"reason": "NO_AGENTS"}, "NO_AGENTS"),
    ("not_claimed", {"reason": "REJECTED", "rejectedBy": ["a"]}, "REJECTED"),
    ("error", {"error": {"code": "conversation_busy"}}, "conversation_busy"),
    ("error", {"error": {"code": "x" * 500}}, "other"),
    ("claimed", {"addClaimedBy": "agent-7"}, ""),
    ("timeout", {}, ""),
])
def test_exit_reasons_are_a_bounded_label(exit: str, merge_field: dict[str, object],
                                          reason: str) -> None:
    assert metrics.exit_reason(exit, merge_field) == reason


def test_a_json_log_line_carries_the_running_tasks_ids() -> None:
    record = logging.LogRecord("hitl_workers.x", logging.WARNING, __file__, 1,
                               "publish of %s failed", ("exit",), None)
    task_context.enter("task-1", "hitl.claim", {"execution_id": "e-1", "agent_id": "a"})
    try:
        task_context.learn("e-1", "c-1")
        TaskContextFilter().filter(record)
    finally:
        task_context.leave()
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "publish of exit failed"
    assert (line["task_id"], line["task_name"]) == ("task-1", "hitl.claim")
    assert (line["execution_id"], line["conversation_id"]) == ("e-1", "c-1")
    assert record.hitl_ids == " execution_id=e-1 conversation_id=c-1 task_id=task-1"


def test_a_task_about_no_execution_does_not_borrow_one() -> None:
    task_context.enter("tick", "hitl.reconcile", {})
    try:
        task_context.learn("e-1", "c-1")  # the reconciler fires many executions' deadlines
        context = task_context.current()
        assert context is not None and context.execution_id is None
    finally:
        task_context.leave()


def test_ids_from_outside_are_taken_only_when_short_strings() -> None:
    task_context.enter("t", "hitl.claim", {"execution_id": "x" * 129, "conversation_id": 7})
    try:
        context = task_context.current()
        assert context is not None
        assert (context.execution_id, context.conversation_id) == (None, None)
    finally:
        task_context.leave()


def test_flower_sees_the_ids_first_even_in_a_long_request() -> None:
    text = readable_kwargs({"settings": {"popup": {"text": "x" * 5000}},
                            "conversation_id": "c-1", "execution_id": "e-1"})
    assert text.startswith("{'execution_id': 'e-1', 'conversation_id': 'c-1', 'settings'")
    assert len(text) <= 1100


def test_a_task_run_sets_its_context_counts_its_state_and_time_and_clears_it() -> None:
    from celery import signals

    from hitl_workers.observe import task_run  # noqa: F401  (connects the receivers)

    task = type("Task", (), {"name": "hitl.claim"})()  # what the receivers read of a task
    runs = metrics._m().tasks("hitl.claim", "SUCCESS")
    outcomes = metrics._m().agent_events("claim", "claimed")
    durations = metrics._m().task_duration("hitl.claim")
    before = (runs._value.get(), outcomes._value.get(), durations._sum.get())

    signals.task_prerun.send(sender=task, task_id="t-9", task=task, args=(),
                             kwargs={"conversation_id": "c-9", "agent_id": "a"})
    context = task_context.current()
    assert context is not None and (context.task_id, context.conversation_id) == ("t-9", "c-9")
    signals.task_postrun.send(sender=task, task_id="t-9", task=task, args=(), kwargs={},
                              retval={"outcome": "claimed"}, state="SUCCESS")

    assert task_context.current() is None
    assert runs._value.get() == before[0] + 1
    assert outcomes._value.get() == before[1] + 1
    assert durations._sum.get() > before[2]
