"""Schemathesis against the live gateway's ``/openapi.json`` with a valid token (issue 9):
whatever it generates from the schema — valid, odd or hostile parameters and bodies — gets a
documented answer. No 5xx, no undocumented status, no answer outside its schema, no hang.

A short budget per operation, so it runs in every suite. The event stream is left out: it
never ends by design (tests/gateway/test_events_stream.py covers it).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
import schemathesis
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.gateway.harness import Gateway, bearer

EXAMPLES_PER_OPERATION = 25
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


@pytest.fixture
def fuzz_agent(agents: Any) -> Iterator[str]:
    return agents()


def test_every_generated_request_gets_a_documented_answer(gateway: Gateway,
                                                          fuzz_agent: str) -> None:
    # Loaded from the live gateway, so not at collection time (and schemathesis's lazy
    # pytest loader does not support this pytest): each operation runs its own Hypothesis
    # test here instead.
    schema = schemathesis.openapi.from_url(f"{gateway.url}/openapi.json")
    schema = schema.exclude(path="/agents/{agent_id}/events")
    headers = bearer(fuzz_agent)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10, [op.label for op in operations]
    seen: dict[str, set[int]] = {op.label: set() for op in operations}

    for operation, mode in itertools.product(operations, GenerationMode):
        # Positive cases follow the schema; negative ones break it (wrong types, unknown
        # fields, bad ids) and must get a documented refusal such as 422, never a 5xx.
        @hypothesis.given(case=operation.as_strategy(mode))
        @hypothesis.settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None,
                             suppress_health_check=list(hypothesis.HealthCheck),
                             phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
                             database=None)
        def answers_as_documented(case: Any) -> None:
            # The token's own agent in the path, so requests get past the 403 to the checks.
            if case.path_parameters and "agent_id" in case.path_parameters:
                case.path_parameters["agent_id"] = fuzz_agent
            response = case.call_and_validate(headers=headers, checks=CHECKS, timeout=30)
            seen[operation.label].add(response.status_code)  # noqa: B023 (runs right here)

        try:
            answers_as_documented()
        except hypothesis.errors.Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE, operation.label
            continue  # nothing to break: the operation takes no input at all
        except Exception as exc:
            raise AssertionError(f"{operation.label} ({mode.value}): {exc}") from exc
    # It really ran: every operation answered, and the agent's own requests got through.
    assert all(seen.values()), seen
    print({label: sorted(codes) for label, codes in seen.items()})
    assert 200 in seen["GET /agents/{agent_id}/requests"], seen


def test_a_body_that_is_not_utf8_is_422_like_any_malformed_body(api, agents) -> None:
    # found by the fuzzing above: FastAPI answered 400, undocumented
    alice = agents()
    response = api.put(f"/agents/{alice}/status", content=b"A\xff\xfe",
                       headers={**bearer(alice), "content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith("body: invalid JSON")
