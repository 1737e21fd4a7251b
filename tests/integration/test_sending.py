"""Publishing through the kept producer (hitl_workers/tasks/sending.py) against a real Redis
broker: the message a flow engine or a worker receives is the one ``app.send_task`` sends,
field for field, and a connection the broker dropped is replaced on the next publish."""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis
from celery.utils.saferepr import saferepr

import hitl_workers.tasks.timers  # noqa: F401  (registers hitl.fire_timer, as in a worker)
from hitl_workers.app import app
from hitl_workers.clock import utcnow
from hitl_workers.tasks.sending import Sender, kwargs_repr


@pytest.fixture
def broker(redis_urls: dict[str, str]) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_urls["broker"])
    yield client
    client.close()


def received(broker: redis.Redis, queue: str) -> list[dict[str, Any]]:
    """The messages on ``queue`` in the order they were sent, without the per-message tag."""
    found = []
    for raw in reversed(broker.lrange(queue, 0, -1)):
        message = json.loads(raw)
        message["properties"].pop("delivery_tag", None)
        message["body"] = json.loads(base64.b64decode(message["body"]))
        found.append(message)
    return found


@pytest.mark.parametrize("how", ["eta", "eta-header", "exit"])
def test_the_kept_producer_sends_what_send_task_sends(broker, how):
    assert app.tasks["hitl.fire_timer"].ignore_result  # the app finalized, as in a worker
    sender = Sender(app)
    assert sender._task_options("hitl.fire_timer") is not None  # not through send_task
    due = utcnow() + timedelta(minutes=5)
    kwargs: dict[str, Any] = {"execution_id": f"x-{uuid.uuid4().hex[:8]}", "kind": "timeout"}
    # A queue of this test's own: the session's workers consume hitl.timers, and would take
    # the two messages before they are read here.
    name, queue, when = "hitl.fire_timer", f"timers-{uuid.uuid4().hex[:8]}", {"eta": due}
    if how == "eta-header":
        when = {"headers": {"eta": due.isoformat()}}
    if how == "exit":  # a reply queue the configuration does not name
        name, queue, when = "flow.exit", f"flow-{uuid.uuid4().hex[:8]}", {}
        kwargs.update(exit="claimed", merge_fields={"agent": "ann"})
    task_id = f"same-{uuid.uuid4().hex}"
    app.send_task(name, kwargs=kwargs, queue=queue, task_id=task_id, **when)
    sender.send(name, kwargs, queue=queue, task_id=task_id, **when)
    by_send_task, by_sender = [m for m in received(broker, queue)
                               if m["headers"]["id"] == task_id]
    assert by_sender == by_send_task
    assert by_sender["headers"]["kwargsrepr"] == repr(kwargs)


def test_a_dropped_broker_connection_is_replaced_on_the_next_publish(broker):
    sender = Sender(app)
    queue = f"flow-{uuid.uuid4().hex[:8]}"
    sender.send("flow.exit", {"execution_id": "a"}, queue=queue, task_id="exit:a")
    # The broker drops every client connection (a restart, a proxy timing out)
    for client in broker.client_list():
        if int(client["id"]) != broker.client_id():
            broker.client_kill_filter(_id=client["id"])
    sender.send("flow.exit", {"execution_id": "b"}, queue=queue, task_id="exit:b")
    sender.announce_sent("exit:b", "flow.exit", queue, {"execution_id": "b"})
    assert [m["headers"]["id"] for m in received(broker, queue)] == ["exit:a", "exit:b"]


def test_a_long_kwargsrepr_is_cut_as_celery_cuts_it():
    long = {"execution_id": "x", "text": "y" * 5000}
    assert kwargs_repr(long) == saferepr(long, 1024)
    assert kwargs_repr({"a": 1}) == "{'a': 1}"


def events_on(broker: redis.Redis) -> Any:
    """A subscriber to the broker's task events (Celery's ``celeryev`` fanout on Redis)."""
    pubsub = broker.pubsub(ignore_subscribe_messages=True)
    pubsub.psubscribe("*celeryev*")
    pubsub.get_message(timeout=1.0)  # the subscription is in place
    return pubsub


def raw_task_sent(pubsub: Any, task_id: str) -> bytes:
    """The message (as published) carrying the ``task-sent`` event of ``task_id``. The channel
    is the broker's: in a full run the session's worker sends its heartbeats and (batched)
    task events on it too, so the others are passed over."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        found = pubsub.get_message(timeout=0.1)
        if found is None:
            continue
        body = json.loads(base64.b64decode(json.loads(found["data"])["body"]))
        for event in body if isinstance(body, list) else [body]:
            if event.get("type") == "task-sent" and event.get("uuid") == task_id:
                return bytes(found["data"])
    raise AssertionError(f"no task-sent event for {task_id} arrived")


def next_event(pubsub: Any, task_id: str) -> dict[str, Any]:
    """The ``task-sent`` event of ``task_id`` (see :func:`raw_task_sent`), decoded."""
    message = json.loads(raw_task_sent(pubsub, task_id))
    return dict(json.loads(base64.b64decode(message["body"])))


def test_an_exit_and_its_task_sent_event_go_out_together(broker):
    """``send_announced``: the message ``send`` would publish (so ``send_task``'s), then the
    ``task-sent`` event ``announce_sent`` would publish, through one batch of the producer."""
    sender = Sender(app)
    queue = f"flow-{uuid.uuid4().hex[:8]}"
    kwargs = {"execution_id": f"x-{uuid.uuid4().hex[:8]}", "exit": "claimed",
              "merge_fields": {"agent": "ann"}}
    pubsub = events_on(broker)
    try:
        sender.send("flow.exit", kwargs, queue=queue, task_id="exit:plain")
        sender.announce_sent("exit:plain", "flow.exit", queue, kwargs)
        plain_event = next_event(pubsub, "exit:plain")
        sender.send_announced("flow.exit", kwargs, queue=queue, task_id="exit:batched")
        batched_event = next_event(pubsub, "exit:batched")
    finally:
        pubsub.close()
    plain, batched = received(broker, queue)
    assert batched["headers"]["id"] == "exit:batched"
    for message in (plain, batched):
        for varying in ("id", "root_id"):
            message["headers"].pop(varying)
        message["properties"].pop("correlation_id")
    assert batched == plain
    assert batched_event["type"] == "task-sent" and batched_event["uuid"] == "exit:batched"
    for event in (plain_event, batched_event):
        for varying in ("uuid", "root_id", "timestamp", "clock", "local_received"):
            event.pop(varying, None)
    assert batched_event == plain_event


def test_a_batch_on_a_dropped_connection_is_published_again_the_ordinary_way(broker):
    sender = Sender(app)
    queue = f"flow-{uuid.uuid4().hex[:8]}"
    sender.send_announced("flow.exit", {"execution_id": "a"}, queue=queue, task_id="exit:a")
    for client in broker.client_list():  # the broker drops every client connection
        if int(client["id"]) != broker.client_id():
            broker.client_kill_filter(_id=client["id"])
    pubsub = events_on(broker)
    try:
        sender.send_announced("flow.exit", {"execution_id": "b"}, queue=queue,
                              task_id="exit:b")
        assert next_event(pubsub, "exit:b")["uuid"] == "exit:b"
    finally:
        pubsub.close()
    ids = [m["headers"]["id"] for m in received(broker, queue)]
    # At least once: a batch cut off after Redis ran it could leave an identical copy.
    assert ids[0] == "exit:a" and set(ids[1:]) == {"exit:b"}


def test_a_batched_exit_is_byte_for_byte_what_send_task_sends(broker):
    """The batched path builds its message itself (``Sender._batched``): the raw Redis entry
    equals ``send_task``'s, key order included, but for kombu's random delivery tag."""
    sender = Sender(app)
    queue = f"flow-{uuid.uuid4().hex[:8]}"
    kwargs = {"execution_id": f"x-{uuid.uuid4().hex[:8]}", "exit": "claimed",
              "merge_fields": {"agent": "ann", "note": "é ☃"}}
    task_id = f"exit:{kwargs['execution_id']}"
    app.send_task("flow.exit", kwargs=kwargs, queue=queue, task_id=task_id)
    pubsub = events_on(broker)
    try:
        sender.send_announced("flow.exit", kwargs, queue=queue, task_id=task_id)
        raw_event = raw_task_sent(pubsub, task_id)
    finally:
        pubsub.close()
    by_send_task, by_sender = (re.sub(rb'"delivery_tag": "[^"]+"', b'"delivery_tag": "-"', raw)
                               for raw in reversed(broker.lrange(queue, 0, -1)))
    assert by_sender == by_send_task
    # The event: the envelope Celery's dispatcher publishes (checked field by field against
    # announce_sent's in the test above), here its shape and key order.
    assert raw_event is not None
    envelope = json.loads(raw_event)
    assert list(envelope) == ["body", "content-encoding", "content-type", "headers",
                              "properties"]
    assert list(envelope["properties"]) == ["delivery_mode", "delivery_info", "priority",
                                            "body_encoding", "delivery_tag"]
    assert envelope["properties"]["delivery_info"] == {"exchange": "celeryev",
                                                       "routing_key": "task.sent"}
    event = json.loads(base64.b64decode(envelope["body"]))
    assert event["type"] == "task-sent" and event["uuid"] == task_id
    assert event["kwargs"] == repr(kwargs) and event["queue"] == queue
