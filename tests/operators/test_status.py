"""``hitl-workers status`` run as an operator runs it: a separate process, its exit code."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from hitl_workers.ops.processes import ALL_QUEUES
from hitl_workers.store.db import transaction
from hitl_workers.store.tables import outbox
from tests.operators.conftest import OPS_NODE, Ops, cli
from tests.support.steps import request


def status(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*cli(), "status", *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})})


def test_a_healthy_system_reports_ok_with_what_waits(
        ops: Ops, client: Any, agents: Callable[..., str], team: str, flow: Any) -> None:
    # Given a step waiting for an agent
    agents()
    step = request(team, flow.reply_to, timeout="5m")
    assert client.call("hitl.request_assistance", **step)["state"] == "waiting"

    # When the operator asks for the status as JSON
    done = status("--json")

    # Then all is well, and it shows what waits, the queues, the workers and the reconciler
    assert done.returncode == 0, done.stdout + done.stderr
    found = json.loads(done.stdout)
    assert found["ok"] is True and found["problems"] == []
    assert found["executions"]["waiting"] >= 1
    assert found["timers"]["pending"].get("timeout", 0) >= 1
    assert set(found["broker"]["queues"]) == set(ALL_QUEUES)
    assert all(isinstance(q["messages"], int) for q in found["broker"]["queues"].values())
    assert set(found["workers"][OPS_NODE]) == set(ALL_QUEUES)
    assert found["reconciler"]["heartbeat_age_s"] < found["reconciler"]["stale_after_s"]

    # And the text form says the same for a person
    text = status()
    assert text.returncode == 0, text.stdout + text.stderr
    assert "executions" in text.stdout and OPS_NODE in text.stdout
    assert text.stdout.rstrip().endswith("OK")
    client.call("hitl.cancel", execution_id=step["execution_id"])


def test_no_worker_on_the_broker_is_a_problem_with_a_remedy(ops: Ops) -> None:
    # Given a broker (Redis database) that no worker listens to
    empty_broker = os.environ["HITL_REDIS_URL"]

    # When the operator asks for the status there
    done = status(env={"HITL_BROKER_URL": empty_broker})

    # Then it exits 1 and says what is wrong and what to do
    assert done.returncode == 1, done.stdout + done.stderr
    assert "no worker answered" in done.stdout
    assert "do: start one" in done.stdout


def test_an_unreachable_broker_is_a_problem(ops: Ops) -> None:
    done = status("--json", "--timeout", "1", env={"HITL_BROKER_URL": "redis://127.0.0.1:1/0"})
    assert done.returncode == 1
    found = json.loads(done.stdout)
    assert found["ok"] is False
    assert any("broker does not answer" in p["what"] and "HITL_BROKER_URL" in p["do"]
               for p in found["problems"])
    assert found["executions"]["waiting"] >= 0  # the database part still answered


def test_a_webhook_exit_backing_off_is_shown_on_schedule_not_as_a_stuck_outbox(
        ops: Ops) -> None:
    # Given a webhook exit whose receiver has failed for an hour, its next attempt ahead
    now = datetime.now(UTC)
    with transaction() as conn:
        row_id = conn.execute(sa.insert(outbox).values(
            dedupe_key=f"exit:status-{uuid.uuid4().hex[:8]}", kind="exit", execution_id=None,
            payload={"webhook": True, "kwargs": {}}, created_at=now - timedelta(hours=1),
            attempted_at=now - timedelta(minutes=1), attempts=9, last_error="HTTP 500",
            next_attempt_at=now + timedelta(minutes=10)).returning(outbox.c.id)).scalar_one()
    try:
        # When the operator asks for the status
        found = json.loads(status("--json").stdout)
        text = status().stdout
    finally:
        with transaction() as conn:
            conn.execute(sa.delete(outbox).where(outbox.c.id == row_id))
    # Then it is not a problem: it waits on its own backoff, and the status says so
    assert found["ok"] is True, found["problems"]
    backing_off = found["webhooks_backing_off"]
    assert backing_off["count"] >= 1 and backing_off["next_attempt_at"] is not None
    assert "webhooks" in text and "backing off" in text and "HTTP 500" in text


def test_an_old_unsent_message_with_no_backoff_is_still_a_stuck_outbox(ops: Ops) -> None:
    # Given a notification that could not be published for an hour (no webhook backoff)
    now = datetime.now(UTC)
    with transaction() as conn:
        row_id = conn.execute(sa.insert(outbox).values(
            dedupe_key=f"notify:status-{uuid.uuid4().hex[:8]}", kind="notify",
            execution_id=None, payload={"agents": [], "event": {}},
            # tried just now, so that the reconciler leaves it alone during the test
            created_at=now - timedelta(hours=1), attempted_at=now, attempts=3,
            last_error="ConnectionError()").returning(outbox.c.id)).scalar_one()
    try:
        found = json.loads(status("--json").stdout)
    finally:
        with transaction() as conn:
            conn.execute(sa.delete(outbox).where(outbox.c.id == row_id))
    # Then it is a problem, counted among the unsent
    assert found["ok"] is False
    assert found["outbox"]["unsent"].get("notify", 0) >= 1
    assert any("outbox message(s) unsent" in p["what"] for p in found["problems"])
