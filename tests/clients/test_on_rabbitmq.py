"""Flow engines in Node.js on RabbitMQ, under each ``HITL_RABBITMQ_QUEUE_TYPE``.

- A flow engine that speaks raw AMQP (the npm package ``amqplib``, no Celery library) runs every
  exit. It follows docs/contract.md alone: it declares its reply queue as §2 "Reply queues" says
  for the system's queue type, publishes protocol-2 messages with the documented headers and
  properties, and consumes its exits (tests/clients/amqp_raw/flow_engine.js). The agents' clicks
  come from this process, as an agent UI would send them.
- The ``celery-node`` flow engine of tests/clients/test_celery_node.py, which can only declare
  classic queues: refused by RabbitMQ (PRECONDITION_FAILED) under ``quorum``, every exit under
  ``classic`` — the reason the setting exists.

Each queue type gets a system of its own (``rabbitmq_system`` in conftest.py).
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any

from tests.clients.celery_node_run import check_run, scenario
from tests.clients.conftest import node_output, start_node
from tests.clients.exits import assert_each_case_left_by_its_exit
from tests.support.schemas import assert_conforms
from tests.support.system import System

EXIT_FIELDS = {"execution_id", "conversation_id", "flow_id", "step_id", "exit", "merge_field",
               "exited_at"}


def _request(execution_id: str, tag: str, queue: str, **settings: Any) -> dict[str, Any]:
    return {"execution_id": execution_id, "conversation_id": f"conv-{execution_id}",
            "flow_id": "flow-amqp", "step_id": "step-1",
            "conversation": {"tags": [tag], "contact": {"name": "Ada"}},
            "settings": settings, "reply_to": {"task": "flow.step_exited", "queue": queue}}


def _act_when_waiting(app: Any, task: str, execution_id: str, agent_id: str) -> dict[str, Any]:
    """Send an agent's click once the flow engine's request has been dispatched (before, the
    answer is ``not_found``; without an ``event_id`` nothing of that answer is kept)."""
    deadline = time.monotonic() + 30
    while True:
        result: dict[str, Any] = app.send_task(task, kwargs={
            "execution_id": execution_id, "agent_id": agent_id}).get(timeout=20)
        if result["outcome"] != "not_found" or time.monotonic() > deadline:
            return result
        time.sleep(0.2)


def test_a_raw_amqp_flow_engine_runs_every_exit(rabbitmq_system: tuple[str, str, System],
                                                tmp_path: Path) -> None:
    queue_type, url, system = rabbitmq_system
    app = system.app
    run = uuid.uuid4().hex[:8]
    queue = f"flow-amqp-{run}"
    tag = {n: f"team:amqp-{n}-{run}" for n in (
        "claim", "none", "busy", "reject", "timer", "timeout", "error")}
    ids = {n: f"amqp-{n}-{run}" for n in tag}
    agent = {n: f"amqp-{n}-{run}" for n in ("claimer", "busy", "rejecter", "idle")}

    # Given agents in the directory (sent as an agent-management system would)
    for name, status, tags in [("claimer", "available", [tag["claim"]]),
                               ("busy", "busy", [tag["busy"]]),
                               ("rejecter", "available", [tag["reject"]]),
                               ("idle", "available", [tag["timer"], tag["timeout"]])]:
        assert app.send_task("hitl.upsert_agent", kwargs={
            "agent_id": agent[name], "name": name, "status": status,
            "rule_groups": [[t] for t in tags]}).get(timeout=20)["status"] == status

    # When the raw AMQP flow engine starts seven steps
    requests = [
        _request(ids["claim"], tag["claim"], queue),
        _request(ids["none"], tag["none"], queue),
        _request(ids["busy"], tag["busy"], queue),
        _request(ids["reject"], tag["reject"], queue),
        _request(ids["timer"], tag["timer"], queue, timeout="1m",
                 popup={"text": "Countdown", "timer": {"auto_action_timeout": "1s"}}),
        _request(ids["timeout"], tag["timeout"], queue, timeout="1s"),
        _request(ids["error"], tag["error"], queue, timeout="31d"),
    ]
    proc = start_node("amqp_raw", "flow_engine.js", {
        "url": url, "queue_type": queue_type, "reply_queue": queue, "requests": requests,
        "expect": [r["execution_id"] for r in requests], "timeout_ms": 40000,
        "settle_ms": 1500}, tmp_path)
    try:
        # and the agents click where a case needs them to
        claimed = _act_when_waiting(app, "hitl.claim", ids["claim"], agent["claimer"])
        rejected = _act_when_waiting(app, "hitl.reject", ids["reject"], agent["rejecter"])
        out = node_output(proc, tmp_path)
    finally:
        if proc.poll() is None:
            proc.kill()
        for agent_id in agent.values():
            app.send_task("hitl.remove_agent", kwargs={"agent_id": agent_id}).get(timeout=20)
    assert claimed["outcome"] == "claimed", claimed
    assert rejected["outcome"] == "rejected", rejected

    # Then each step sent exactly one exit, a protocol-2 message it could read
    assert out["published"] == len(requests)
    exits = out["exits"]
    for request in requests:
        execution_id = request["execution_id"]
        assert len(exits.get(execution_id, [])) == 1, (queue_type, execution_id, exits)
        message = exits[execution_id][0]
        assert message["task"] == "flow.step_exited"
        assert message["id"] == f"exit:{execution_id}"
        assert message["content_type"] == "application/json"
        assert message["args"] == []
        assert set(message["kwargs"]) == EXIT_FIELDS
        assert message["kwargs"]["conversation_id"] == request["conversation_id"]
        assert_conforms("exit.json", message["kwargs"])

    def exit_of(name: str) -> tuple[str, Any]:
        kwargs = exits[ids[name]][0]["kwargs"]
        return kwargs["exit"], kwargs["merge_field"]

    assert_each_case_left_by_its_exit(exit_of, claimer=agent["claimer"], rejecter=agent["rejecter"])


def test_celery_node_needs_classic_queues_on_rabbitmq(
        rabbitmq_system: tuple[str, str, System], tmp_path: Path) -> None:
    queue_type, url, _system = rabbitmq_system
    # Given the celery-node flow engine of test_celery_node.py, with RabbitMQ as its broker
    spec, ids = scenario(url, os.environ["HITL_RESULT_BACKEND_URL"])

    # When it runs
    proc = start_node("celery_node", "flow_engine.js", spec, tmp_path)

    if queue_type == "quorum":
        # Then under quorum queues RabbitMQ refuses its classic declaration of hitl.requests
        _out, stderr = proc.communicate(timeout=60)
        assert proc.returncode != 0
        assert "PRECONDITION" in stderr and "x-queue-type" in stderr, stderr[-2000:]
        return
    # Then under classic queues every step exits once, as documented
    check_run(spec, ids, node_output(proc, tmp_path), os.environ["HITL_REDIS_URL"])
