"""Property-based fuzzing of every task's payload parser and validator, and of the guard.

Whatever a client sends, each parser returns its declared outcome — the model or an
``Invalid`` naming fields, a reason or None — and never raises: an exception there would be a
task failing instead of an answer, or, for the guard, a worker stopping. The answers built
from them must be JSON, as they travel back over the broker.

A short budget (a few seconds for the whole file); ``HYPOTHESIS_PROFILE=long`` runs more.
"""

from __future__ import annotations

import json
import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kombu import Connection, Message

from hitl_workers.domain.request import AssistanceRequest, ReplyTo
from hitl_workers.domain.validation import (
    Invalid,
    parse_kwargs,
    salvage_execution_id,
    salvage_reply_to,
    validate_request,
)
from hitl_workers.services import agent_events, agents
from hitl_workers.tasks.envelope import envelope_problem, guard_channel
from hitl_workers.tasks.guard import refusal
from hitl_workers.tasks.refused_request import deep_field, shallow_loads

settings.register_profile("short", max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=2000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "short"))

# Text as JSON can carry it: any code point, lone surrogates and NUL included.
any_text = st.text(st.characters(codec=None, exclude_categories=[]), max_size=20)
scalars = (st.none() | st.booleans() | st.integers() | st.floats() | any_text
           | st.integers(min_value=10**30, max_value=10**40))
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(any_text, children, max_size=4),
    max_leaves=15)
ids = st.sampled_from(["exec-1", "a" * 128, "a" * 129, "", "has space", "x:y@z.q-1_2"]) \
    | any_text | json_values
durations = st.sampled_from(["10", "2.5", "500ms", "30s", "5m", "1h 30m", "1m30s", "2w",
                             "PT1M30S", "P1DT2H", "P1M", "31d", "-1s", "0", "", "1e400", "NaN",
                             "25h", "1 fortnight"]) | any_text | st.integers() | st.floats()


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly the field's own shape, sometimes any JSON at all."""
    return strategy | json_values


timer = st.fixed_dictionaries({}, optional={
    "auto_action_timeout": durations, "label": maybe(any_text)})
popup = st.fixed_dictionaries({}, optional={
    "text": maybe(any_text), "display_for": durations, "timer": maybe(timer),
    "buttons": maybe(st.dictionaries(st.sampled_from(["claim", "close", "reject", "x"]),
                                     maybe(st.fixed_dictionaries(
                                         {}, optional={"enabled": maybe(st.booleans()),
                                                       "label": maybe(any_text)})))),
    "additional_timers": maybe(st.lists(maybe(st.fixed_dictionaries(
        {}, optional={"label": maybe(any_text), "since": durations})), max_size=12)),
})
step_settings = st.fixed_dictionaries({}, optional={
    "timeout": durations, "allow_busy": maybe(st.booleans()),
    "allow_offline": maybe(st.booleans()), "specific_agent_id": ids,
    "reject_policy": maybe(st.sampled_from(["any", "all", "most"])), "popup": maybe(popup),
})
requests = st.fixed_dictionaries({}, optional={
    "execution_id": ids, "conversation_id": ids, "flow_id": ids, "step_id": ids,
    "conversation": maybe(st.fixed_dictionaries({}, optional={
        "tags": maybe(st.lists(ids, max_size=5)), "contact": json_values})),
    "settings": maybe(step_settings),
    "reply_to": maybe(st.fixed_dictionaries({}, optional={"task": ids, "queue": ids})),
    "surprise": json_values,
})
positional = st.lists(json_values, max_size=2).map(tuple)


def is_json(value: Any) -> bool:
    json.dumps(value)
    return True


@given(requests)
def test_validate_request_returns_a_request_or_errors_naming_fields(kwargs):
    checked = validate_request(kwargs)
    assert isinstance(checked, AssistanceRequest | Invalid)
    if isinstance(checked, Invalid):
        assert checked.errors and all(e.field and e.message for e in checked.errors)
        assert is_json({"message": checked.message, "fields": checked.fields})
    else:
        assert is_json(checked.model_dump(mode="json"))


@given(st.dictionaries(any_text, json_values, max_size=6))
def test_validate_request_on_arbitrary_objects(kwargs):
    assert isinstance(validate_request(kwargs), AssistanceRequest | Invalid)


@given(requests)
def test_salvaging_the_ids_of_a_bad_request_never_raises(kwargs):
    execution_id = salvage_execution_id(kwargs)
    assert execution_id is None or isinstance(execution_id, str)
    reply = salvage_reply_to(kwargs)
    assert reply is None or reply is False or isinstance(reply, ReplyTo)
    assert deep_field(kwargs) is None or isinstance(deep_field(kwargs), str)


event_kwargs = st.fixed_dictionaries({}, optional={
    "agent_id": ids, "execution_id": ids, "conversation_id": ids, "event_id": ids,
    "reason": maybe(any_text), "name": maybe(any_text),
    "status": maybe(st.sampled_from(["available", "busy", "offline", "away"])),
    "rule_groups": maybe(st.lists(st.lists(ids, max_size=3), max_size=3)),
    "extra": json_values,
})
MODELS = [agent_events.AgentEventIn, agent_events.CancelIn, agents.UpsertAgentIn,
          agents.SetStatusIn, agents.RemoveAgentIn]


@given(st.sampled_from(MODELS), positional, event_kwargs)
def test_each_tasks_parser_returns_its_model_or_errors(model, args, kwargs):
    parsed = parse_kwargs(model, args, kwargs)
    assert isinstance(parsed, model | Invalid)
    if isinstance(parsed, Invalid):
        assert is_json(agent_events.invalid_result(parsed, kwargs.get("execution_id")))
        assert is_json(agents.invalid_result(parsed, kwargs))


@given(json_values)
def test_the_envelope_check_names_a_problem_or_none(entry):
    problem = envelope_problem(entry)
    assert problem is None or isinstance(problem, str)


envelopes = st.fixed_dictionaries({}, optional={
    "body": maybe(any_text), "content-type": maybe(st.just("application/json")),
    "headers": maybe(st.dictionaries(any_text, json_values, max_size=3)),
    "properties": maybe(st.fixed_dictionaries({}, optional={
        "delivery_tag": ids, "body_encoding": maybe(st.sampled_from(["base64", "rot13"])),
        "delivery_info": maybe(st.fixed_dictionaries({}, optional={
            "exchange": ids, "routing_key": ids}))})),
}) | json_values


@given(envelopes)
def test_any_redis_entry_becomes_a_message_kombu_can_track(entry):
    # kombu's in-memory transport is a virtual one, like Redis: it builds messages the same way
    with Connection("memory://") as conn:
        channel = conn.default_channel
        guard_channel(channel)
        message = channel.Message(entry, channel=channel)
    assert isinstance(message.delivery_tag, str) and message.delivery_tag
    problem = getattr(message, "envelope_problem", None)
    assert problem is None or refusal(message) == problem


headers = st.fixed_dictionaries({}, optional={
    "task": maybe(st.sampled_from(["hitl.claim", "celery.backend_cleanup", "nope"])),
    "id": ids, "eta": maybe(st.sampled_from(["2030-01-01T00:00:00+00:00", "soon"])),
    "expires": maybe(st.sampled_from(["2030-01-01T00:00:00", "never"])),
    "timelimit": maybe(st.lists(st.none() | st.floats() | st.integers(), max_size=3)),
    "retries": json_values, "root_id": ids, "stamps": json_values, "x": json_values,
})
bodies = (st.binary(max_size=60)
          | st.builds(lambda a, k: json.dumps([a, k, None]).encode(),
                      st.lists(json_values, max_size=2), event_kwargs)
          | json_values.map(lambda v: json.dumps(v).encode()))


@given(bodies, st.none() | headers,  # anything else is refused as an envelope (see above)
       st.sampled_from([None, "", "application/json", "text/plain",
                        "application/x-python-serialize"]))
def test_the_guard_says_why_or_lets_through_and_never_raises(body, message_headers,
                                                            content_type):
    message = Message(body=body, content_type=content_type, content_encoding="utf-8",
                      headers=message_headers, accept=["application/json"])
    reason = refusal(message)
    assert reason is None or isinstance(reason, str)
    if reason is None:  # what passes is what Celery can unpack in the main process
        args, kwargs, _embed = message.payload
        assert isinstance(args, list) and isinstance(kwargs, dict)


def cut(value: Any, keep_depth: int, depth: int = 0) -> Any:
    """The reference: ``value`` with lists and objects deeper than ``keep_depth`` as None."""
    if isinstance(value, list | dict):
        if depth + 1 > keep_depth:
            return None
        if isinstance(value, list):
            return [cut(v, keep_depth, depth + 1) for v in value]
        return {k: cut(v, keep_depth, depth + 1) for k, v in value.items()}
    return value


plain_json = st.recursive(
    st.none() | st.booleans() | st.integers() | any_text,
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(any_text, children, max_size=3),
    max_leaves=20)


@given(plain_json, st.integers(min_value=0, max_value=6), st.booleans())
def test_reading_a_too_deep_body_with_the_depth_cut_matches_the_reference(value, keep, ascii_):
    text = json.dumps(value, ensure_ascii=ascii_)
    assert shallow_loads(text, keep) == cut(value, keep)
    if ascii_:  # as bytes off the wire too
        assert shallow_loads(text.encode(), keep) == cut(value, keep)
