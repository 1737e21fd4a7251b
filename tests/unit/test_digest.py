"""The request digest tells a retry from a clash (docs/contract.md §10): equal for the same request
however it is written, different for any other request."""

from __future__ import annotations

from typing import Any

import pytest

from hitl_workers.domain.digest import canonical_json, request_digest
from hitl_workers.domain.request import AssistanceRequest
from hitl_workers.domain.validation import validate_request

BASE: dict[str, Any] = {
    "execution_id": "flow-42:step-7:run-1", "conversation_id": "conv-9",
    "conversation": {"tags": ["team:billing"], "contact": {"name": "Ada", "id": "c-1"}},
    "settings": {"timeout": "5m", "popup": {"text": "hi", "timer": {}}},
    "reply_to": {"task": "flow.step_exited", "queue": "flow"},
}


def digest(kwargs: dict[str, Any]) -> str:
    checked = validate_request(kwargs)
    assert isinstance(checked, AssistanceRequest), checked
    return request_digest(checked)


def test_the_same_request_has_the_same_digest_however_it_is_written() -> None:
    reordered = dict(reversed(list(BASE.items())))
    reordered["conversation"] = {"contact": {"id": "c-1", "name": "Ada"},
                                 "tags": ["team:billing"]}
    reordered["settings"] = {"popup": {"timer": {}, "text": "hi"}, "timeout": 300}
    assert digest(reordered) == digest(BASE)
    assert len(digest(BASE)) == 64 and int(digest(BASE), 16) >= 0


@pytest.mark.parametrize("change", [
    {"conversation_id": "conv-10"},
    {"settings": {"timeout": "6m", "popup": {"text": "hi", "timer": {}}}},
    {"settings": {"timeout": "5m", "popup": {"text": "hi!", "timer": {}}}},
    {"conversation": {"tags": ["team:billing"], "contact": {"name": "Ada", "id": "c-2"}}},
    {"conversation": {"tags": ["team:billing", "vip"], "contact": {"name": "Ada", "id": "c-1"}}},
    {"flow_id": "flow-42"},
    {"reply_to": {"task": "flow.step_exited", "queue": "flow-2"}},
])
def test_any_other_request_has_another_digest(change: dict[str, Any]) -> None:
    assert digest({**BASE, **change}) != digest(BASE)


def test_a_default_left_out_is_not_part_of_the_digest() -> None:
    # So a setting added later with a default does not turn an old retry into a clash; and a
    # default spelt out is a different (if equivalent) request.
    assert digest({"execution_id": "e", "conversation_id": "c"}) != digest(
        {"execution_id": "e", "conversation_id": "c", "settings": {"timeout": "5m"}})
    assert digest({"execution_id": "e", "conversation_id": "c"}) == digest(
        {"conversation_id": "c", "execution_id": "e"})


def test_canonical_json_sorts_keys_and_keeps_text_as_is() -> None:
    assert canonical_json({"b": 1, "a": ["é", {"d": 2, "c": 3}]}) == (
        '{"a":["é",{"c":3,"d":2}],"b":1}'.encode())
