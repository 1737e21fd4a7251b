"""The guard's checks, on kombu messages built as the broker would hand them over.

The acceptance tier (tests/acceptance/test_every_message_guarded.py) sends the same kinds of
messages to real workers; here each rule is pinned down on its own, quickly.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from celery.utils.imports import symbol_by_name
from celery.worker.consumer import Consumer
from kombu import Message

from hitl_workers.tasks.envelope import envelope_problem
from hitl_workers.tasks.guard import (
    MAX_MESSAGE_DEPTH,
    TOO_DEEP,
    header_problem,
    nesting_depth,
    refusal,
)
from hitl_workers.tasks.refused_request import deep_field

EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def celery_message(task: str = "hitl.claim", kwargs: dict | None = None, **options) -> Message:
    """A message exactly as Celery itself writes it (headers, body, content type)."""
    from hitl_workers.app import app

    sent = app.amqp.as_task_v2("task-1", task, args=(), kwargs=kwargs or {}, **options)
    return Message(body=json.dumps(sent.body).encode(), content_type="application/json",
                   content_encoding="utf-8", headers=sent.headers,
                   accept=["application/json"])


def raw_message(body: bytes | str, headers: dict | None = None,
                content_type: str | None = "application/json") -> Message:
    return Message(body=body, content_type=content_type, content_encoding="utf-8",
                   headers={"task": "hitl.claim", "id": "task-1"} if headers is None else headers,
                   accept=["application/json"])


def nested(depth: int) -> list:
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


def test_what_celery_itself_sends_passes():
    eta = datetime(2030, 1, 1, tzinfo=UTC)
    assert refusal(celery_message(kwargs={"agent_id": "a", "execution_id": "e"})) is None
    assert refusal(celery_message(eta=eta, expires=eta, time_limit=5, soft_time_limit=3)) is None


def test_a_message_nested_just_below_the_limit_passes_and_just_above_is_refused():
    # counted from the message: (headers, body) > body > kwargs > the nested list
    fits = celery_message(kwargs={"x": nested(MAX_MESSAGE_DEPTH - 3)})
    assert refusal(fits) is None
    too_deep = celery_message(kwargs={"x": nested(MAX_MESSAGE_DEPTH - 2)})
    assert refusal(too_deep) == TOO_DEEP


def depth_by_definition(value: object) -> int:
    """Lists, tuples and objects (by their values) count one level each; scalars none."""
    if isinstance(value, dict):
        return 1 + max((depth_by_definition(v) for v in value.values()), default=0)
    if isinstance(value, list | tuple):
        return 1 + max((depth_by_definition(v) for v in value), default=0)
    return 0


@pytest.mark.parametrize("value", [
    0, "text", None, [], {}, (), [1, "a"], {"a": {"b": []}}, {"[[[": "]]]"},
    ({"task": "x", "stamps": {}}, [[], {"k": [1, {"deep": [[[]]]}]}, None]),
    [[], [[[]]], {"a": 1}, ({"b": ({"c": []},)},)], {"a": [[[[[[1]]]]]], "b": 2},
    nested(12), {"k": nested(7), "l": [nested(9)]},
])
def test_nesting_depth_counts_as_its_definition(value):
    expected = depth_by_definition(value)
    assert nesting_depth(value, 100) == expected
    for limit in range(expected + 2):  # past the limit it stops, with a figure past it
        found = nesting_depth(value, limit)
        assert found == expected if expected <= limit else found > limit


def test_nesting_depth_stops_at_the_limit_on_input_too_deep_to_recurse_over():
    assert nesting_depth(nested(100_000), MAX_MESSAGE_DEPTH) == MAX_MESSAGE_DEPTH + 1


def test_deep_headers_are_refused():
    message = celery_message()
    message.headers["x-deep"] = nested(MAX_MESSAGE_DEPTH + 5)
    assert refusal(message) == TOO_DEEP


@pytest.mark.parametrize(("message", "words"), [
    (raw_message(b"[[], {}, {}]", content_type=None), "no content-type"),
    (raw_message(b"[[], {}, {}]", content_type="application/x-python-serialize"),
     "cannot be decoded"),
    (raw_message(b"{not json"), "cannot be decoded"),
    (raw_message(b'{"task": "hitl.claim"}'), "protocol-2"),
    (raw_message(b"[[], {}, {}]", headers={}), "no task header"),
    (raw_message(b"[[], {}, {}]", headers={"task": "hitl.claim"}), "no id header"),
    (raw_message(b"[[], {}, {}]", headers={"task": 7, "id": "x"}), "no task header"),
])
def test_malformed_messages_are_refused_with_the_reason(message, words):
    assert words in refusal(message)


@pytest.mark.parametrize(("headers", "name"), [
    ({"eta": 12}, "eta"), ({"expires": []}, "expires"), ({"eta": "soon"}, "eta"),
    ({"timelimit": [1]}, "timelimit"), ({"timelimit": [-1, None]}, "timelimit"),
    ({"retries": "x"}, "retries"), ({"retries": True}, "retries"),
    ({"root_id": 1}, "root_id"), ({"stamps": []}, "stamps"), ({"ignore_result": "no"},
                                                              "ignore_result"),
])
def test_headers_of_the_wrong_type_are_named(headers, name):
    problem = header_problem({"task": "t", "id": "i", **headers})
    assert problem is not None and f"{name} header" in problem


def test_a_message_whose_envelope_could_not_be_read_is_refused_for_that():
    message = raw_message(b"[[], {}, {}]")
    message.envelope_problem = "the Redis envelope has no properties.delivery_tag"
    assert "delivery_tag" in refusal(message)


@pytest.mark.parametrize(("entry", "words"), [
    ("text", "not a JSON object"), ([1], "not a JSON object"),
    ({"body": "x"}, "no properties object"),
    ({"properties": {}}, "no properties.delivery_tag"),
    ({"properties": {"delivery_tag": ""}}, "no properties.delivery_tag"),
    ({"properties": {"delivery_tag": "t"}}, "delivery_info"),
    ({"properties": {"delivery_tag": "t", "delivery_info": {"exchange": "q"}}},
     "delivery_info"),
])
def test_redis_envelopes_kombu_cannot_read_are_named(entry, words):
    assert words in envelope_problem(entry)


def test_a_complete_redis_envelope_is_readable():
    assert envelope_problem({"properties": {"delivery_tag": "t", "delivery_info": {
        "exchange": "hitl.requests", "routing_key": "hitl.requests"}}}) is None


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"execution_id": "e", "conversation": {"tags": [], "contact": {"d": nested(300)}}},
     "conversation.contact"),
    ({"execution_id": "e", "x": nested(300)}, "x"),
    ({"execution_id": "e", "settings": {"popup": {"text": nested(300)}}}, "settings.popup"),
    ({"execution_id": "e", "conversation": {"contact": {}}}, None),
])
def test_the_field_holding_the_deep_part_is_named(kwargs, field):
    assert deep_field(kwargs) == field


def test_the_worker_runs_the_guarded_consumer():
    from hitl_workers.app import app
    from hitl_workers.tasks.consumer import GuardedConsumer

    consumer = symbol_by_name(app.conf.worker_consumer)
    assert consumer is GuardedConsumer and issubclass(consumer, Consumer)


@pytest.mark.parametrize(("header_levels", "refused"), [
    (MAX_MESSAGE_DEPTH - 2, False), (MAX_MESSAGE_DEPTH - 1, True)])
def test_a_shallow_body_still_has_its_headers_counted_to_the_limit(header_levels, refused):
    # (headers, body) > headers > the nested list: MAX_MESSAGE_DEPTH levels fit, one more not
    message = celery_message(kwargs={"agent_id": "a", "execution_id": "e"})
    message.headers["x-deep"] = nested(header_levels)
    assert refusal(message) == (TOO_DEEP if refused else None)


def test_brackets_inside_strings_do_not_make_a_shallow_message_too_deep():
    # More brackets in the text than the limit, all of them in strings: the value is walked
    message = celery_message(kwargs={"execution_id": "e", "note": "[{" * MAX_MESSAGE_DEPTH})
    assert refusal(message) is None


def test_a_deep_body_is_refused_whatever_its_content_encoding_says():
    body = json.dumps([[], {"x": nested(MAX_MESSAGE_DEPTH + 5)}, {}]).encode()
    message = raw_message(body)
    message.content_encoding = "binary"  # decoded from the bytes as they are
    assert refusal(message) == TOO_DEEP
