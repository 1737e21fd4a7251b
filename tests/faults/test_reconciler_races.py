"""Reconcilers, claims and the arming of timers racing on the same overdue steps, in one
process against the real database: every step ends exactly once, and no transaction
deadlocks (the reconciler locks each execution row before its timers, with SKIP LOCKED,
as claims lock the execution row before writing its timers)."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from hitl_workers.clock import utcnow
from hitl_workers.services import agents as directory
from hitl_workers.services import dispatch
from hitl_workers.services.agent_events import AgentEventIn, handle_event
from hitl_workers.services.reconcile import fire_overdue
from hitl_workers.settings import get_settings
from hitl_workers.store import repo
from hitl_workers.store.db import reset_engine, transaction
from hitl_workers.store.tables import audit_events, executions, outbox
from hitl_workers.tasks.common import in_transaction

DEFAULTS = dispatch.Defaults("flow.step_exited", "flow-faults-races", timer_horizon_s=600)
STEPS = 150


@pytest.fixture
def wide_pool(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(get_settings(), "db_pool_size", 12)
    reset_engine()
    yield
    reset_engine()


def _steps(team: str, count: int) -> list[str]:
    with transaction() as conn:
        for i in range(3):
            directory.upsert_agent(conn, directory.UpsertAgentIn(
                agent_id=f"{team}-a{i}", status="available", rule_groups=[[team]]), utcnow())
    ids = []
    for i in range(count):
        execution_id = f"race-{uuid.uuid4().hex[:12]}"
        settings: dict[str, Any] = {"timeout": "0.3s"}
        if i % 2:
            settings["popup"] = {"text": "x", "timer": {"auto_action_timeout": "0.2s"}}
        with transaction() as conn:
            answer, _ = dispatch.submit(conn, (), {
                "execution_id": execution_id, "conversation_id": f"c-{execution_id}",
                "conversation": {"tags": [team]}, "settings": settings},
                task_id=None, now=utcnow(), defaults=DEFAULTS)
        assert answer["state"] == "waiting"
        ids.append(execution_id)
    return ids


def _run_together(work: list[Callable[[], Any]]) -> list[BaseException]:
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(work))

    def run(job: Callable[[], Any]) -> None:
        try:
            barrier.wait(timeout=30)
            job()
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(job,)) for job in work]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return errors


def test_reconcilers_claims_and_arming_racing_end_each_step_once_without_deadlock(wide_pool):
    # Given 150 steps whose deadlines have all passed, no wake-up having fired them
    team = f"team:{uuid.uuid4().hex[:8]}"
    ids = _steps(team, STEPS)
    time.sleep(0.4)
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()

    def reconciler() -> None:
        fire_overdue(utcnow, lambda effects: None, budget_s=30, batch=10)

    def claimer(seed: int) -> None:
        order = ids[:]
        random.Random(seed).shuffle(order)
        for execution_id in order:
            event = AgentEventIn(agent_id=f"{team}-a{seed % 3}", execution_id=execution_id)
            answer, _ = in_transaction(lambda conn, event=event: handle_event(
                conn, "claim", event, utcnow()))
            with lock:
                outcomes[answer["outcome"]] += 1

    def armer() -> None:
        for _ in range(20):
            with transaction() as conn:
                now = utcnow()
                repo.claim_timers_to_arm(conn, now, now + timedelta(seconds=600), 50)

    # When three reconcilers, two agents claiming every step and the arming all run at once
    errors = _run_together([reconciler, reconciler, reconciler,
                            lambda: claimer(1), lambda: claimer(2), armer])
    # Then nothing failed (no deadlock), and each step ended exactly once
    assert not errors, errors
    with transaction() as conn:
        rows = {r.execution_id: r for r in conn.execute(
            sa.select(executions).where(executions.c.execution_id.in_(ids)))}
        recorded = Counter(conn.execute(sa.select(audit_events.c.execution_id).where(
            audit_events.c.execution_id.in_(ids),
            audit_events.c.kind == "exit_recorded")).scalars())
        exit_rows = Counter(conn.execute(sa.select(outbox.c.execution_id).where(
            outbox.c.execution_id.in_(ids), outbox.c.kind == "exit")).scalars())
    assert {r.state for r in rows.values()} == {"exited"}
    assert all(recorded[i] == 1 and exit_rows[i] == 1 for i in ids)
    claimed = sum(r.exit == "claimed" for r in rows.values())
    assert outcomes["claimed"] == claimed
    assert claimed + sum(r.exit in ("timeout", "timer_action") for r in rows.values()) == STEPS
    # (the countdown, due first, is what ends a step that has one)
    assert not any(r.exit == "timeout" for i, r in rows.items() if ids.index(i) % 2)
