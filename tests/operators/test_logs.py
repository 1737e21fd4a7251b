"""Worker logs as JSON (HITL_LOG_JSON=true): every line from task code carries the ids."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from tests.operators.conftest import Ops
from tests.support.steps import eventually, request


def test_task_lines_carry_the_task_id_and_the_steps_ids(
        ops: Ops, client: Any, agents: Callable[..., str], team: str, flow: Any) -> None:
    # Given a step put up and claimed by id alone (the claim names no conversation)
    agent = agents()
    step = request(team, flow.reply_to, timeout="5m")
    execution_id, conversation_id = step["execution_id"], step["conversation_id"]
    assert client.call("hitl.request_assistance", **step)["state"] == "waiting"
    claim = client.send("hitl.claim", execution_id=execution_id, agent_id=agent)
    assert claim.get(timeout=20)["outcome"] == "claimed"
    flow.wait_for(execution_id)

    # When the worker's log is read
    def lines_about_it() -> list[dict[str, Any]]:
        found = []
        for line in ops.log_lines():
            if execution_id in line:
                found.append(json.loads(line))  # a line about the step is JSON, whole
        return found

    # Then each line from a pool process (where task code runs) names the task and the step
    def has_claim() -> bool:
        return any(e.get("task_name") == "hitl.claim" and e["process"] != "MainProcess"
                   for e in lines_about_it())

    assert eventually(has_claim)
    entries = lines_about_it()
    # (the reconciler and outbox delivery serve many executions at once: their lines name them
    # in the message, not as the task's ids)
    from_tasks = [e for e in entries if e["process"] != "MainProcess"
                  and e.get("task_name") not in ("hitl.reconcile", "hitl.fire_overdue",
                                                 "hitl.deliver_outbox")]
    assert {e["task_name"] for e in from_tasks} >= {"hitl.request_assistance", "hitl.claim"}
    for entry in from_tasks:
        assert entry["execution_id"] == execution_id, entry
        assert entry["conversation_id"] == conversation_id, entry
        assert entry["task_id"], entry
        assert {"ts", "level", "logger", "message"} <= set(entry)
    claim_lines = [e for e in from_tasks if e["task_name"] == "hitl.claim"]
    assert {e["task_id"] for e in claim_lines} == {claim.id}

    # And the worker's main process, which receives the messages, names the task
    about_claim = [json.loads(line) for line in ops.log_lines() if claim.id in line]
    received = [e for e in about_claim
                if e["process"] == "MainProcess" and e["message"].endswith(" received")]
    assert [(e["task_id"], e["task_name"]) for e in received] == [(claim.id, "hitl.claim")]
