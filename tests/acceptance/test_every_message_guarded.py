"""Every message passes the guard in the worker's main process, whatever its task name.

A message nested a few hundred levels deep used to kill the worker for any task that was not
one of the project's guarded ones (``hitl.fire_timer``, Celery's built-ins, a name nobody
registered): the main process pickled it for the pool, pickle recursed, the worker exited and
the message went back to the queue to kill the next one. Now the consumer refuses it, keeps it
as a dead letter with why, drops it and goes on; each test proves the worker still serves.
"""

from __future__ import annotations

import base64
import json
import os
import re
import uuid
from pathlib import Path

import pytest
import redis
from celery.exceptions import InvalidTaskError

from tests.support.steps import (
    dead_letters_for,
    eventually,
    execution,
    protocol2_body,
    publish_raw,
    request,
)


def _registered_task_names() -> list[str]:
    """Every task the worker registers, Celery's built-ins included: a new task is covered the
    day it is added."""
    from hitl_workers.app import app

    app.loader.import_default_modules()  # the task modules in ``include``, as a worker does
    return sorted(app.tasks.keys())


REGISTERED = _registered_task_names()
DEEP = "[" * 600 + "]" * 600


@pytest.fixture
def still_serves(client, flow, agents, team, system):
    """``still_serves()``: the worker is alive and a valid request and its claim are served."""
    def check() -> None:
        worker = system.procs["worker"]
        assert worker.alive, f"the worker died:\n{worker.tail()}"
        alice = agents()
        step = request(team, flow.reply_to)
        assert client.call("hitl.request_assistance", **step)["state"] == "waiting"
        assert client.call("hitl.claim", execution_id=step["execution_id"],
                           agent_id=alice)["outcome"] == "claimed"
        assert flow.wait_for(step["execution_id"])["exit"] == "claimed"
        assert worker.alive, f"the worker died:\n{worker.tail()}"

    return check


def _queue_of(task: str, app) -> str:
    route = app.conf.task_routes.get(task)
    return route["queue"] if route else app.conf.task_default_queue


def test_the_registry_holds_the_projects_tasks_and_celerys_builtins():
    assert "hitl.fire_timer" in REGISTERED and "celery.backend_cleanup" in REGISTERED
    assert "celery.chord_unlock" in REGISTERED


@pytest.mark.parametrize("task", REGISTERED)
def test_a_deeply_nested_message_to_any_registered_task_is_refused_and_kept(
        system, still_serves, task):
    task_id = publish_raw(os.environ["HITL_BROKER_URL"], _queue_of(task, system.app),
                          protocol2_body(f'{{"x": {DEEP}}}'), task=task)
    (letter,) = eventually(lambda: dead_letters_for(task_id), timeout=10)
    assert letter.task_name == task
    assert "levels" in letter.reason
    still_serves()


def test_a_deeply_nested_message_to_an_unknown_task_is_refused_and_kept(system, still_serves):
    task_id = publish_raw(os.environ["HITL_BROKER_URL"], "hitl.timers",
                          protocol2_body(f'{{"x": {DEEP}}}'), task="hitl.nobody_registered_this")
    (letter,) = eventually(lambda: dead_letters_for(task_id), timeout=10)
    assert letter.task_name == "hitl.nobody_registered_this"
    assert "levels" in letter.reason
    # a caller waiting on the result learns why at once
    with pytest.raises(InvalidTaskError, match="levels"):
        system.app.AsyncResult(task_id).get(timeout=10)
    still_serves()


# --- nothing readable is lost -----------------------------------------------------------------

@pytest.mark.parametrize("depth", [500, 50_000])  # 50,000: too deep for the JSON decoder too
def test_a_request_too_deep_to_process_with_readable_ids_exits_error_once(
        system, flow, team, still_serves, depth):
    step = request(team, flow.reply_to)
    step["conversation"]["contact"] = {"deep": "__NESTED__"}
    kwargs_json = json.dumps(step).replace('"__NESTED__"',
                                           "{\"a\": " * depth + "1" + "}" * depth)
    task_id = publish_raw(os.environ["HITL_BROKER_URL"], "hitl.requests",
                          protocol2_body(kwargs_json), task="hitl.request_assistance")

    exit_message = flow.wait_for(step["execution_id"])
    assert exit_message["exit"] == "error"
    error = exit_message["merge_field"]["error"]
    assert error["code"] == "invalid_request"
    assert error["fields"] == ["conversation.contact"]
    assert "nested too deeply" in error["message"]
    row = execution(step["execution_id"])
    assert (row.state, row.exit) == ("failed", "error")
    (letter,) = dead_letters_for(task_id)  # the payload is kept for an operator too
    assert ("levels" if depth == 500 else "decoded") in letter.reason
    still_serves()
    assert flow.count_for(step["execution_id"]) == 1


# --- raw envelopes on the Redis list ----------------------------------------------------------

def _broker() -> redis.Redis:
    return redis.Redis.from_url(os.environ["HITL_BROKER_URL"])


def _raw_envelope(task: str, kwargs: dict, task_id: str) -> dict:
    body = json.dumps([[], kwargs, {"callbacks": None, "errbacks": None, "chain": None,
                                    "chord": None}])
    return {
        "body": base64.b64encode(body.encode()).decode(),
        "content-type": "application/json",
        "content-encoding": "utf-8",
        "headers": {"lang": "py", "task": task, "id": task_id, "root_id": task_id,
                    "parent_id": None, "group": None, "retries": 0, "eta": None,
                    "expires": None},
        "properties": {"correlation_id": task_id, "delivery_mode": 2,
                       "delivery_info": {"exchange": "hitl.requests",
                                         "routing_key": "hitl.requests"},
                       "priority": 0, "body_encoding": "base64",
                       "delivery_tag": str(uuid.uuid4())},
    }


@pytest.mark.parametrize(("missing", "reason"), [
    ("delivery_tag", "delivery_tag"),
    ("properties", "properties"),
    ("content-type", "content-type"),
    ("headers", "headers"),
])
def test_a_raw_envelope_missing_a_required_field_is_refused_with_that_reason(
        system, flow, team, still_serves, missing, reason):
    task_id = f"raw-{uuid.uuid4()}"
    envelope = _raw_envelope("hitl.request_assistance", request(team, flow.reply_to), task_id)
    if missing == "delivery_tag":
        del envelope["properties"]["delivery_tag"]
    elif missing == "headers":  # not missing: not an object (kombu's Message raised on it)
        envelope["headers"] = f"task={envelope['headers']['task']}"
    else:
        envelope.pop(missing)
    _broker().lpush("hitl.requests", json.dumps(envelope))
    if missing == "headers":  # no task id to file it under: the entry is kept as it was
        letter = eventually(lambda: _dead_letter_with_payload(task_id), timeout=10)
    else:
        (letter,) = eventually(lambda: dead_letters_for(task_id), timeout=10)
        assert letter.task_name == "hitl.request_assistance"
    assert reason in letter.reason
    assert "protocol-2" not in letter.reason
    still_serves()


@pytest.mark.parametrize("raw", ['"just a string"', "[1, 2, 3]", '{"body": "x"}'])
def test_a_raw_envelope_that_is_not_an_envelope_is_refused_and_kept(system, still_serves, raw):
    _broker().lpush("hitl.requests", raw)
    letter = eventually(lambda: _dead_letter_with_payload(raw), timeout=10)
    assert letter is not None and "envelope" in letter.reason
    still_serves()


def _dead_letter_with_payload(payload: str):
    import sqlalchemy as sa

    from hitl_workers.store.db import transaction
    from hitl_workers.store.tables import dead_letters

    with transaction() as conn:
        return conn.execute(sa.select(dead_letters).where(
            dead_letters.c.payload.contains(payload))).first()


DOCS = Path(__file__).resolve().parents[2] / "docs" / "contract.md"


def test_the_documented_redis_envelope_works_verbatim(system, still_serves):
    from hitl_workers.ops.flow_engine import ExitListener

    text = DOCS.read_text()
    (example,) = re.findall(r"<!-- redis-envelope-example -->\s*```json\n(.*?)```", text,
                            flags=re.S)
    envelope = json.loads(example)
    body = json.loads(envelope["body"])
    execution_id = body[1]["execution_id"]
    with ExitListener(os.environ["HITL_BROKER_URL"], body[1]["reply_to"]["queue"]) as flow:
        # pushed exactly as the docs write it, as a non-Celery producer would
        _broker().lpush("hitl.requests", example)
        exit_message = flow.wait_for(execution_id)
    assert exit_message["exit"] == "not_claimed"  # nobody carries the example's tag
    assert execution(execution_id).state == "exited"
    still_serves()


# --- odd headers ------------------------------------------------------------------------------

ODD_HEADERS = [
    {"eta": "not a date"}, {"expires": "tomorrow-ish"}, {"eta": 12}, {"expires": []},
    {"timelimit": "x"}, {"timelimit": [1]}, {"timelimit": ["a", "b"]}, {"retries": "many"},
    {"id": 42}, {"task": ["hitl.fire_timer"]}, {"root_id": {"a": 1}}, {"group_index": "x"},
    {"stamps": "x"}, {"stamped_headers": 5}, {"shadow": 7}, {"parent_id": [1]},
]


@pytest.mark.parametrize("headers", ODD_HEADERS, ids=lambda h: "-".join(h))
def test_odd_headers_are_refused_and_kept_and_do_not_kill_the_worker(system, still_serves,
                                                                      headers):
    task_id = publish_raw(os.environ["HITL_BROKER_URL"], "hitl.timers",
                          protocol2_body('{"execution_id": "e", "kind": "timeout"}'),
                          task="hitl.fire_timer", extra_headers=headers)
    (name,) = headers
    if name == "id":
        task_id = str(headers["id"])
    (letter,) = eventually(lambda: dead_letters_for(task_id), timeout=10)
    assert f"{name} header" in letter.reason
    still_serves()


def test_an_unknown_task_name_is_kept_as_a_dead_letter(system, still_serves):
    task_id = publish_raw(os.environ["HITL_BROKER_URL"], "hitl.requests",
                          protocol2_body('{"execution_id": "e"}'), task="hitl.request_asistance")
    (letter,) = eventually(lambda: dead_letters_for(task_id), timeout=10)
    assert "hitl.request_asistance" in letter.reason and "registered" in letter.reason
    still_serves()


@pytest.mark.parametrize("raw", [f"this is not {{json {uuid.uuid4()}", b"\xff\xfe not utf-8"])
def test_a_redis_entry_that_is_not_json_is_kept_and_does_not_kill_the_worker(system,
                                                                             still_serves, raw):
    # It used to stop the worker: kombu parses the entry in the event loop, outside any task
    _broker().lpush("hitl.requests", raw)
    shown = raw if isinstance(raw, str) else "not utf-8"
    letter = eventually(lambda: _dead_letter_with_payload(shown), timeout=10)
    assert letter is not None and "not JSON" in letter.reason
    still_serves()
