"""``/openapi.json`` documents the flow engines' routes (docs/contract.md §10) as they behave: the
§1 request model as the start body, every status code with its body, the service token."""

from __future__ import annotations

import pytest

TASK = {"502", "503", "504"}
AUTH = {"401", "403", "422"}
V1_OPERATIONS = {
    ("post", "/v1/executions"): {"200", "201", "409"} | AUTH | TASK,
    ("get", "/v1/executions/{execution_id}"): {"200", "404", "503"} | AUTH,
    ("post", "/v1/executions/{execution_id}/cancel"): {"200", "404", "409"} | AUTH | TASK,
    ("put", "/v1/agents/{agent_id}"): {"200"} | AUTH | TASK,
    ("put", "/v1/agents/{agent_id}/status"): {"200", "404"} | AUTH | TASK,
    ("delete", "/v1/agents/{agent_id}"): {"200"} | AUTH | TASK,
}


@pytest.fixture(scope="module")
def schema(gateway):
    import httpx

    return httpx.get(gateway.url + "/openapi.json", timeout=30).json()


def _ref(response):
    return response["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]


@pytest.mark.parametrize(("operation", "codes"), V1_OPERATIONS.items(),
                         ids=[f"{m} {p}" for m, p in V1_OPERATIONS])
def test_every_v1_operation_lists_its_status_codes_and_the_service_token(schema, operation,
                                                                         codes):
    method, path = operation
    documented = schema["paths"][path][method]
    assert set(documented["responses"]) == codes
    assert documented["security"] == [{"ServiceToken": []}]
    for code in codes - {"200", "201"}:
        assert "detail" in str(schema["components"]["schemas"][_ref(
            documented["responses"][code])]["required"])


def test_the_start_body_is_the_request_model_and_answers_are_typed(schema):
    start = schema["paths"]["/v1/executions"]["post"]
    body = start["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/AssistanceRequest"}
    components = schema["components"]["schemas"]
    request = components["AssistanceRequest"]
    assert set(request["required"]) == {"execution_id", "conversation_id"}
    assert request["additionalProperties"] is False
    assert components["StepSettings"]["additionalProperties"] is False
    assert _ref(start["responses"]["201"]) == _ref(start["responses"]["200"]) == "StartResult"
    assert _ref(start["responses"]["409"]) == _ref(start["responses"]["422"]) == "StartRefused"
    assert {"code", "message", "fields"} <= set(components["StartRefused"]["properties"])
    view = components["ExecutionView"]["properties"]
    assert {"type": "string", "format": "date-time"} in view["dispatched_at"]["anyOf"]
    assert schema["components"]["securitySchemes"]["ServiceToken"]["scheme"] == "bearer"
    cancel = schema["paths"]["/v1/executions/{execution_id}/cancel"]["post"]
    assert cancel["requestBody"].get("required") is not True  # the body may be left out
