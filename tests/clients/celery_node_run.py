"""The celery-node flow engine's scenario and what its run must show, on either broker.

The engine (tests/clients/celery_node/flow_engine.js) manages its agents, starts seven steps —
one per exit of docs/contract.md §2 — clicks for the agents where a case needs it, and reads the
exits from its own queue with a celery-node worker. A change to a task name, a queue, the message
format or a field it reads fails :func:`check_run`.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import redis

from hitl_workers.notify.streams import stream_key
from tests.clients.exits import assert_each_case_left_by_its_exit
from tests.support.schemas import assert_conforms

EXIT_FIELDS = {"execution_id", "conversation_id", "flow_id", "step_id", "exit", "merge_field",
               "exited_at"}


def _request(execution_id: str, tag: str, reply_to: dict[str, str],
             **settings: Any) -> dict[str, Any]:
    return {"execution_id": execution_id, "conversation_id": f"conv-{execution_id}",
            "flow_id": "flow-node", "step_id": "step-1",
            "conversation": {"tags": [tag], "contact": {"name": "Ada", "id": "c-1"}},
            "settings": settings, "reply_to": reply_to}


def scenario(broker: str, backend: str) -> tuple[dict[str, Any], dict[str, str]]:
    """Seven cases, one per exit of §2, each with tags and agents of its own."""
    run = uuid.uuid4().hex[:8]
    queue = f"flow-node-{run}"
    reply_to = {"task": "flow.step_exited", "queue": queue}
    agent = {name: f"node-{name}-{run}" for name in ("claimer", "busy", "rejecter", "idle")}
    tag = {name: f"team:node-{name}-{run}" for name in (
        "claim", "none", "busy", "reject", "timer", "timeout", "error")}
    ids = {name: f"node-{name}-{run}" for name in tag}

    def make(name: str, status: str, *tags: str) -> dict[str, Any]:
        return {"agent_id": agent[name], "name": name, "status": status,
                "rule_groups": [[t] for t in tags]}

    claim = {"execution_id": ids["claim"], "agent_id": agent["claimer"],
             "event_id": f"click-{run}"}
    cases = [
        {"name": "claimed", "request": _request(ids["claim"], tag["claim"], reply_to),
         # the same click sent twice: the second answer is the first, verbatim
         "events": [{"task": "hitl.claim", "kwargs": claim},
                    {"task": "hitl.claim", "kwargs": claim}],
         "repeat": True},
        {"name": "no_agents", "request": _request(ids["none"], tag["none"], reply_to)},
        {"name": "not_available", "request": _request(ids["busy"], tag["busy"], reply_to)},
        {"name": "rejected", "request": _request(ids["reject"], tag["reject"], reply_to),
         "events": [{"task": "hitl.reject", "kwargs": {"execution_id": ids["reject"],
                                                       "agent_id": agent["rejecter"]}}]},
        {"name": "timer_action", "request": _request(
            ids["timer"], tag["timer"], reply_to, timeout="1m",
            popup={"text": "Countdown", "timer": {"auto_action_timeout": "1s"}})},
        {"name": "timeout", "request": _request(ids["timeout"], tag["timeout"], reply_to,
                                                timeout="1s")},
        {"name": "error", "request": _request(ids["error"], tag["error"], reply_to,
                                              timeout="31d")},
    ]
    return {
        "broker": broker, "backend": backend, "reply_queue": queue,
        "reply_task": "flow.step_exited",
        "agents": [make("claimer", "available", tag["claim"]),
                   make("busy", "busy", tag["busy"]),
                   make("rejecter", "available", tag["reject"]),
                   make("idle", "available", tag["timer"], tag["timeout"])],
        "cases": cases, "timeout_ms": 30000, "settle_ms": 1500,
    }, {**ids, **{f"agent:{k}": v for k, v in agent.items()}}


def check_run(spec: dict[str, Any], ids: dict[str, str], out: dict[str, Any],
              redis_url: str) -> None:
    """Assert everything a run of :func:`scenario` must show; ``redis_url``: the notifications'."""
    # Then every directory call answered once committed
    assert out["agents"] == [{"agent_id": a["agent_id"], "status": a["status"]}
                             for a in spec["agents"]]
    assert out["removed"] == [{"agent_id": a["agent_id"], "status": "removed"}
                              for a in spec["agents"]]
    cases = out["cases"]
    assert not [name for name, case in cases.items() if "failed" in case], cases

    # and every step exited exactly once, with the documented fields and merge field
    exits = out["exits"]
    for case in spec["cases"]:
        execution_id = case["request"]["execution_id"]
        assert len(exits.get(execution_id, [])) == 1, (case["name"], exits.get(execution_id))
        message = exits[execution_id][0]
        assert set(message) == EXIT_FIELDS, message
        assert message["conversation_id"] == case["request"]["conversation_id"]
        assert (message["flow_id"], message["step_id"]) == ("flow-node", "step-1")

    def exit_of(name: str) -> tuple[str, Any]:
        message = exits[ids[name]][0]
        return message["exit"], message["merge_field"]

    assert_each_case_left_by_its_exit(exit_of, claimer=ids["agent:claimer"],
                                      rejecter=ids["agent:rejecter"])

    # and the task results are the §1 and §3 shapes
    claimed = cases["claimed"]
    assert claimed["request_result"] == {"execution_id": ids["claim"], "state": "waiting",
                                         "exit": None, "duplicate": False}
    first, repeat = claimed["event_results"]
    assert first == {"outcome": "claimed", "execution_id": ids["claim"], "state": "exited",
                     "exit": "claimed", "merge_field": {"addClaimedBy": ids["agent:claimer"]}}
    assert repeat == first
    assert claimed["repeat_result"] == {"execution_id": ids["claim"], "state": "exited",
                                        "exit": "claimed", "duplicate": True}
    assert cases["rejected"]["event_results"][0]["outcome"] == "rejected"
    assert cases["no_agents"]["request_result"]["exit"] == "not_claimed"
    assert cases["error"]["request_result"]["state"] == "failed"

    # and every message it received, and every notification its agents got, fits the schemas
    # the project ships (docs/schema/)
    for messages in exits.values():
        for message in messages:
            assert_conforms("exit.json", message)
    for result in out["agents"] + out["removed"]:
        assert_conforms("directory.result.json", result)
    for case in cases.values():
        assert_conforms("hitl.request_assistance.result.json", case["request_result"])
        for result in case.get("event_results", []):
            assert_conforms("agent_event.result.json", result)
    notes = redis.Redis.from_url(redis_url, decode_responses=True)
    read = [json.loads(fields["event"]) for a in spec["agents"]
            for _id, fields in notes.xrange(stream_key(a["agent_id"]))]
    assert {n["type"] for n in read} == {"assistance.requested", "assistance.withdrawn"}
    assert any(n["type"] == "assistance.requested" and n["popup"] for n in read)
    for notification in read:
        assert_conforms("notification.json", notification)
        assert_conforms(f"{notification['type']}.json", notification)
