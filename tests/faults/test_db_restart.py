"""PostgreSQL stopped and started again while steps wait, agents claim and new requests arrive.

Every pooled connection dies with the restart. The engine has no pre-ping: a dead connection
fails its first statement, SQLAlchemy invalidates the pool, and the task retries (at once
for an invalidated connection, with backoff on OperationalError while the server is down).
Nothing may be lost and nothing may exit twice. PostgreSQL is shared with other test runs on
the machine, so it is restarted once, for a few seconds.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
import uuid
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from hitl_workers.store import db as store_db
from hitl_workers.tasks.common import in_transaction
from tests.faults.harness import (
    DRAIN_S_PER_DEADLINE,
    Report,
    Step,
    assert_each_exits_once_on_time,
    deadlines_between,
    dispatch,
    dispatch_rate,
    mixed_steps,
    step_request,
    utc_now,
    wait_until,
)

STEPS = 150
CLAIMED = 45
DOWN_S = 1.5
"""How long PostgreSQL stays stopped (plus its stop and start: about 2-3 s in all)."""
SLACK_S = 1.5
"""Beyond one reconcile interval, counted from the moment PostgreSQL answers again: the
first statements on dead pooled connections, and a loaded CI machine; plus
DRAIN_S_PER_DEADLINE for each deadline that passed while it was away."""
WORKERS = {"pg-requests": (("hitl.requests", "hitl.events"), 3),
           "pg-timers": (("hitl.timers", "hitl.outbox"), 2)}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fx(fault_system):
    return fault_system(workers=WORKERS)


def restart_postgresql(url: str, down_s: float = DOWN_S) -> tuple[float, float]:
    """Stop the PostgreSQL cluster serving ``url``, wait ``down_s``, start it again
    (``pg_ctlcluster``); returns (stopping, answering again) as Unix times.

    Not ``pg_ctlcluster restart``: a small cluster restarts in a tenth of a second, too
    quickly for any deadline to fall in between; the pause makes the outage last."""
    port = str(make_url(url).port or 5432)
    clusters = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True,
                              text=True, check=True).stdout.split("\n")
    version, name = next(line.split()[:2] for line in clusters
                         if line.split()[2:3] == [port])
    ctl = [*([] if os.geteuid() == 0 else ["sudo", "-n"]), "pg_ctlcluster",
           "--skip-systemctl-redirect", version, name]
    stopping = time.time()
    try:
        subprocess.run([*ctl, "stop", "--mode", "fast"], check=True, timeout=60)
        time.sleep(down_s)
    finally:  # PostgreSQL is shared: always bring it back
        subprocess.run([*ctl, "start"], check=True, timeout=60)
    probe = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        wait_until(lambda: _answers(probe), 30, "PostgreSQL to answer", interval=0.05)
    finally:
        probe.dispose()
    return stopping, time.time()


def _answers(engine: sa.Engine) -> bool:
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("select 1")
        return True
    except sa.exc.OperationalError:
        return False


@pytest.fixture
def production_engine(fx):
    """The process-wide engine of hitl_workers.store.db (no pre-ping), on the private
    database, for the length of one test."""
    saved = store_db._engine, store_db._engine_pid
    store_db._engine = store_db.make_engine(fx.db_url)
    store_db._engine_pid = os.getpid()
    yield store_db._engine
    store_db._engine.dispose()
    store_db._engine, store_db._engine_pid = saved


def test_nothing_is_lost_and_nothing_exits_twice_across_a_postgresql_restart(
        fx, production_engine):
    # Given 150 steps waiting on deadlines of 1-8 s, and a pooled connection in this process
    lead_s = dispatch_rate(fx.app, fx.team, fx.listener.reply_to)
    steps = mixed_steps(STEPS, 1.0, 8.0, lead_s=lead_s, seed=5)
    dispatch(fx.app, steps, fx.team, fx.listener.reply_to)
    in_transaction(lambda conn: conn.exec_driver_sql("select 1").scalar())
    assert production_engine.pool.checkedin() >= 1
    # When agents claim 45 of them and new requests arrive, while PostgreSQL restarts
    to_claim = steps[::STEPS // CLAIMED][:CLAIMED]
    claims: dict[str, object] = {}
    late_steps = [Step(f"fx-pg-late-{uuid.uuid4().hex[:10]}", None, 3.0) for _ in range(10)]
    late_requests = []

    def load() -> None:
        for i, step in enumerate(to_claim):
            claims[step.execution_id] = fx.app.send_task("hitl.claim", kwargs={
                "execution_id": step.execution_id, "agent_id": fx.agents[i % 3]})
            if i % 4 == 0 and len(late_requests) < len(late_steps):
                late_requests.append(fx.app.send_task(
                    "hitl.request_assistance",
                    kwargs=step_request(late_steps[len(late_requests)], fx.team,
                                        fx.listener.reply_to)))
            time.sleep(0.08)

    # (timed so that the first deadlines fall while PostgreSQL is away)
    first_due = min(t.due_at for kinds in fx.db.timers([s.execution_id for s in steps]).values()
                    for t in kinds.values())
    time.sleep(max(0.0, (first_due - utc_now()).total_seconds() - 1.0))
    sender = threading.Thread(target=load)
    sender.start()
    time.sleep(0.5)
    down_at, back_at = restart_postgresql(fx.db_url)
    sender.join()
    recovered_at = utc_now()

    # Then a dead pooled connection is invalidated and the transaction retried: no error
    assert in_transaction(lambda conn: conn.exec_driver_sql("select 1").scalar()) == 1
    # And every claim and request is answered (after retries)
    answers = {eid: result.get(timeout=120) for eid, result in claims.items()}
    for result in late_requests:
        assert result.get(timeout=120)["state"] in ("waiting", "exited")
    won = {eid: a for eid, a in answers.items() if a["outcome"] in ("claimed",
                                                                    "already_claimed")}
    assert all(a["outcome"] == "already_resolved" for eid, a in answers.items()
               if eid not in won), answers
    # And each claimed step exited claimed, once, by the agent that won
    rows = fx.db.executions(won)
    for eid, answer in won.items():
        assert (rows[eid].state, rows[eid].exit) == ("exited", "claimed")
        assert rows[eid].merge_field == answer["merge_field"]
    wait_until(lambda: all(fx.listener.count_for(eid) for eid in won), 60, "claimed exits")
    # And every other step exited once, by its deadline, on time once PostgreSQL was back
    timed = [s for s in steps + late_steps[:len(late_requests)] if s.execution_id not in won]
    during = deadlines_between(fx.db, timed, datetime.fromtimestamp(down_at, UTC),
                               recovered_at)
    slack_s = SLACK_S + DRAIN_S_PER_DEADLINE * during
    report = Report("db_restart", extra={
        "postgresql_down_s": round(back_at - down_at, 2), "claims": len(answers),
        "claims_won": len(won), "requests_during_restart": len(late_requests),
        "deadlines_during_restart": during, "slack_s": round(slack_s, 2)})
    assert_each_exits_once_on_time(fx.db, fx.listener, timed, report, slack_s=slack_s,
                                   recovered_at=recovered_at, timeout=120)
    snapshot = fx.listener.snapshot()
    for eid in won:
        assert {(m["exit"], m["exited_at"]) for m in snapshot[eid]} == {
            ("claimed", rows[eid].ended_at.isoformat())}
    assert during > 0  # the restart did catch deadlines
