"""Sequential offer timeouts are deadlines like the others (docs/contract.md §9): kill every
worker, or lose the broker, while sequential steps wait on their offers, and every offer still
passes on once, on time, one holder at a time.

An offer timeout is a timer row with a wake-up, as a countdown is; the wake-ups the workers
hold in memory die with them (or with the broker's database), so the reconciler must find the
overdue offers in the database and pass each on exactly once.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import datetime
from itertools import groupby
from typing import Any

import pytest
import sqlalchemy as sa

from hitl_workers.store.tables import audit_events, offers
from tests.faults.harness import (
    DRAIN_S_PER_DEADLINE,
    INTERVAL_S,
    Report,
    lose_the_broker,
    utc_now,
    wait_until,
    workers_answer,
)
from tests.support.steps import request

STEPS = 60
OFFER_TIMEOUT_S = 3
SLACK_S = 2.0
"""Beyond one reconcile interval: the restarted workers' (or reconnected consumers') first
transactions, and a loaded CI machine."""
WORKERS = {"offers-requests": (("hitl.requests", "hitl.events"), 3),
           "offers-timers": (("hitl.timers", "hitl.outbox"), 2)}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fx(fault_system):
    return fault_system(workers=WORKERS)


def dispatch_sequential(fx: Any, count: int) -> list[str]:
    """``count`` sequential steps offered to one of the three agents each, held
    ``OFFER_TIMEOUT_S``; the steps themselves wait an hour."""
    ids = [f"fx-seq-{uuid.uuid4().hex[:12]}" for _ in range(count)]
    pending = [fx.app.send_task("hitl.request_assistance", kwargs=request(
        fx.team, fx.listener.reply_to, execution_id=eid, timeout="1h",
        offer={"strategy": "sequential", "offer_timeout": f"{OFFER_TIMEOUT_S}s"}))
        for eid in ids]
    for result in pending:
        assert result.get(timeout=90)["state"] == "waiting"
    return ids


def trails(fx: Any, ids: list[str]) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = defaultdict(list)
    for row in fx.db.rows(sa.select(audit_events).where(
            audit_events.c.execution_id.in_(ids)).order_by(audit_events.c.id)):
        found[row.execution_id].append(row)
    return found


def holds(trail: list[Any]) -> list[tuple[str, Any, datetime | None]]:
    """``(agent, offered audit row, when the hold ended or None)`` in order, asserting that a
    hold only began with nobody holding (within one transaction the ending hold is counted
    first: its rows share one timestamp)."""
    found: list[tuple[str, Any, datetime | None]] = []
    current: tuple[str, Any] | None = None
    for at, group in groupby(trail, key=lambda r: r.at):
        rows = list(group)
        for row in rows:
            if current and row.kind in ("offer_missed", "offer_withdrawn", "rejected") \
                    and row.agent_id == current[0]:
                found.append((current[0], current[1], at))
                current = None
        for row in rows:
            if row.kind == "offered":
                assert current is None, [(r.kind, r.agent_id) for r in trail]
                current = (row.agent_id, row)
    if current:
        found.append((current[0], current[1], None))
    return found


def first_hold_passed(fx: Any, ids: list[str]) -> bool:
    return all(len(holds(t)) >= 2 for t in trails(fx, ids).values()) and \
        len(trails(fx, ids)) == len(ids)


def assert_first_offers_passed_once_on_time(fx: Any, ids: list[str], recovered_at: datetime,
                                            report: Report) -> None:
    wait_until(lambda: first_hold_passed(fx, ids), 60, "every first offer to pass on")
    late: list[str] = []
    report.steps = len(ids)
    for eid, trail in trails(fx, ids).items():
        (first, offered, ended), (second, *_rest) = holds(trail)[:2]
        # The first holder missed its offer exactly once, and the next agent holds it
        assert first != second
        missed = [r for r in trail if r.kind == "offer_missed" and r.agent_id == first]
        assert missed and missed[0].at == ended, [(r.kind, r.agent_id) for r in trail]
        expires_at = datetime.fromisoformat(offered.detail["expires_at"])
        start = max(expires_at, recovered_at)
        lateness = (ended - start).total_seconds()
        report.lateness_s.append(lateness)
        report.raw_lateness_s.append((ended - expires_at).total_seconds())
        if lateness > report.extra["bound_s"]:
            late.append(f"{eid}: {lateness:.2f}s after {start.isoformat()}")
    # At most one holder per step, as the database keeps it
    held = defaultdict(int)
    for row in fx.db.rows(sa.select(offers.c.execution_id).where(
            offers.c.execution_id.in_(ids), offers.c.round.is_not(None),
            offers.c.status.in_(("offered", "closed")))):
        held[row.execution_id] += 1
    assert all(count == 1 for count in held.values()), held
    assert fx.db.count_state(ids, "waiting") == len(ids)
    summary = report.write()
    assert not late, f"{len(late)} offers passed on late ({summary}): {late[:10]}"


def cancel(fx: Any, ids: list[str]) -> None:
    for result in [fx.app.send_task("hitl.cancel", kwargs={"execution_id": eid})
                   for eid in ids]:
        result.get(timeout=60)


def test_offer_timeouts_pass_on_once_on_time_after_every_worker_is_killed(fx):
    # Given sixty sequential steps, each offered to one agent for 3 s
    ids = dispatch_sequential(fx, STEPS)
    # When every worker process is killed before the offers time out, and restarted once
    # they all have
    fx.system.kill(WORKERS)
    killed_at = utc_now()
    trail = trails(fx, ids)
    last_due = max(datetime.fromisoformat(holds(t)[0][1].detail["expires_at"])
                   for t in trail.values())
    wait_until(lambda: utc_now() > last_due, 30, "every offer to be overdue")
    fx.system.restart_workers(WORKERS)
    recovered_at = utc_now()
    # Then every first offer passed on exactly once, no later than the restart + one
    # reconcile interval + slack, one holder at a time
    report = Report("offer_timeouts_worker_kill", extra={
        "bound_s": INTERVAL_S + SLACK_S + DRAIN_S_PER_DEADLINE * STEPS,
        "down_s": round((recovered_at - killed_at).total_seconds(), 2)})
    assert_first_offers_passed_once_on_time(fx, ids, recovered_at, report)
    cancel(fx, ids)


def test_offer_timeouts_pass_on_once_on_time_after_the_broker_loses_everything(fx):
    # Given sixty sequential steps, each offered to one agent for 3 s, their wake-ups held
    ids = dispatch_sequential(fx, STEPS)
    # When the broker's database is flushed and its connections dropped
    lost_at = utc_now()
    dropped = lose_the_broker(fx.redis)
    wait_until(lambda: workers_answer(fx.app, WORKERS), 30, "the workers to reconnect")
    recovered_at = utc_now()
    # Then every first offer still passes on exactly once, on time, one holder at a time
    report = Report("offer_timeouts_broker_flush", extra={
        "bound_s": INTERVAL_S + SLACK_S, "connections_dropped": dropped,
        "broker_back_after_s": round((recovered_at - lost_at).total_seconds(), 2)})
    assert_first_offers_passed_once_on_time(fx, ids, recovered_at, report)
    cancel(fx, ids)
