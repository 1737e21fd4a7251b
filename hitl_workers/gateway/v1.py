"""The flow engines' HTTP interface (docs/contract.md §10): start, poll and cancel steps, and keep
the agent directory, for flow engines that do not speak Celery.

Like the agent routes, these send the contract's own tasks through the
:class:`~hitl_workers.gateway.bridge.TaskBridge` and answer with their results: every decision
(a retry, a race, a validation error) is taken where a Celery sender's would be, in one worker
transaction. The gateway only reads, to tell a retry from a clash and to show an execution.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import partial
from typing import Annotated, Any, get_args

from fastapi import APIRouter, Body, FastAPI, Path, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError

from hitl_workers.domain.digest import request_digest
from hitl_workers.domain.request import ID_PATTERN, AssistanceRequest
from hitl_workers.domain.validation import Invalid, validate_request
from hitl_workers.gateway.errors import Refused
from hitl_workers.gateway.models import ErrorBody, StatusIn, ValidationErrorBody
from hitl_workers.gateway.service_auth import CurrentService
from hitl_workers.gateway.v1_models import (
    AgentAnswer,
    AgentIn,
    CancelIn,
    CancelRefused,
    CancelResult,
    DirectoryStatus,
    ExecutionView,
    OfferView,
    ReleaseAnswer,
    ReleaseBody,
    StartRefused,
    StartResult,
)
from hitl_workers.settings import get_settings
from hitl_workers.store import execution_status
from hitl_workers.store.db import read_only

ExecutionId = Annotated[str, Path(pattern=ID_PATTERN, max_length=128,
                                  description="The execution's id (percent-decoded: "
                                              "`flow-42%3Astep-7` is `flow-42:step-7`).")]
AgentId = Annotated[str, Path(pattern=ID_PATTERN, max_length=128,
                              description="The agent's id (percent-decoded).")]


def _error(description: str, model: Any = ErrorBody) -> dict[str, Any]:
    return {"model": model, "description": description}


AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: _error("No valid service token (`Authorization: Bearer <service token>`)."),
    403: _error("An agent token: these routes need a service token."),
    422: _error("Malformed request: unknown fields, wrong types, invalid JSON, or an id that "
                "is not an id.", ValidationErrorBody),
}
TASK_ERRORS: dict[int | str, dict[str, Any]] = {
    502: _error("The worker failed to answer (see the worker's log)."),
    503: _error("The broker is unavailable: nothing was sent."),
    504: _error("No worker answered in time; the task may still run. Repeating the same "
                "request is safe."),
}
READ_ERRORS: dict[int | str, dict[str, Any]] = {
    503: _error("The database is unavailable."),
}

router = APIRouter(prefix="/v1", responses=AUTH_ERRORS)


async def _read(work: Callable[..., Any], *args: Any) -> Any:
    """A short read-only transaction, off the event loop; 503 when the database is down."""
    def run() -> Any:
        with read_only() as conn:
            return work(conn, *args)
    try:
        return await asyncio.to_thread(run)
    except OperationalError as exc:
        raise Refused(503, "the database is unavailable; try again") from exc


# --- executions -------------------------------------------------------------------------------

START_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": StartResult,
          "description": "A retry: this `execution_id` already exists with the same request; "
                         "the execution as it stands (`duplicate: true`)."},
    409: _error("This `execution_id` exists with a different request; nothing changed.",
                StartRefused),
    422: _error("The request failed validation (§1): the execution is recorded `failed` "
                "(its flow engine gets exit `error` when a reply target could be read); `code`, "
                "`message` and `fields` say what was wrong. A body that is not a JSON object "
                "gets `{detail, errors}` and is not recorded.", StartRefused),
}


def _start_result(answer: dict[str, Any]) -> dict[str, Any]:
    return {key: answer.get(key) for key in StartResult.model_fields}


def _invalid(problem: Invalid, answer: dict[str, Any]) -> Refused:
    return Refused(422, f"the request is invalid: {problem.message}", {
        **_start_result(answer), "code": "invalid_request", "message": problem.message,
        "fields": problem.fields})


def _clash(answer: dict[str, Any]) -> Refused:
    return Refused(409, f"execution {answer.get('execution_id')!r} already exists with a "
                        "different request; use a new execution_id for a new step",
                   _start_result(answer))


def _judge_repeat(checked: AssistanceRequest | Invalid, answer: dict[str, Any],
                  stored: execution_status.ExecutionStatus | None) -> int:
    """The status for a request whose ``execution_id`` already existed: 200 (a retry) or 409.

    The worker stored the digest of the request that created the execution; the same function
    over this request says whether it is the same one. Rows without a digest (a request that
    failed, or one recorded before the digest existed) are judged by what they do have.
    """
    if stored is None:
        return 200  # purged since the worker answered: nothing left to clash with
    if isinstance(checked, Invalid):
        # An invalid request never matches a valid execution; against an invalid one it is
        # answered 422 again (the caller raises it), as its first sending was.
        if stored.error_code == "invalid_request":
            return 422
        return 409
    if stored.request_digest is not None:
        return 200 if stored.request_digest == request_digest(checked) else 409
    if stored.error_code == "invalid_request":
        return 409  # this one is valid, so it is not what was recorded
    return 200 if stored.conversation_id == checked.conversation_id else 409


@router.post(
    "/executions", status_code=201, response_model=StartResult, tags=["flow engines"],
    summary="Start a step execution (hitl.request_assistance, §1)",
    description="The body is the §1 request object. 201: a new execution; 200: a retry of the "
                "same request (same `execution_id`, same body); 409: the `execution_id` exists "
                "with a different body; 422: the request failed validation and is recorded "
                "`failed`. The exit comes to `reply_to` (or poll `GET /v1/executions/{id}`).",
    responses={201: {"description": "A new execution: the §1 task result."},
               **START_RESPONSES, **TASK_ERRORS},
)
async def start(
    request: Request,
    _service: CurrentService,
    body: Annotated[dict[str, Any], Body(description="The §1 request object.")],
) -> Any:
    # The gateway runs the worker's own validation too, only to word its answer: the request
    # is sent either way, so that an invalid one is recorded as failed (§1) by the worker.
    checked = validate_request(body, webhooks=get_settings().webhook_policy())
    answer = await request.app.state.bridge.call("hitl.request_assistance", **body)
    if not answer.get("duplicate"):
        if isinstance(checked, Invalid):
            raise _invalid(checked, answer)
        return _start_result(answer)
    # The execution_id existed. Two senders racing with one id both land here or at 201:
    # the worker's primary key let exactly one create it, and the stored digest says which.
    stored = await _read(partial(execution_status.get_status, with_offers=False),
                         answer["execution_id"])
    status = _judge_repeat(checked, answer, stored)
    if status == 422:
        assert isinstance(checked, Invalid)
        raise _invalid(checked, answer)
    if status == 409:
        raise _clash(answer)
    return JSONResponse(_start_result(answer), status_code=200)


@router.get("/executions/{execution_id}", response_model=ExecutionView,
            tags=["flow engines"], summary="An execution as it stands: state, exit, offers",
            responses={404: _error("No such execution."), **READ_ERRORS})
async def status(execution_id: ExecutionId, _service: CurrentService) -> Any:
    found = await _read(execution_status.get_status, execution_id)
    if found is None:
        raise Refused(404, f"no execution {execution_id!r}")
    return ExecutionView(
        execution_id=found.execution_id, conversation_id=found.conversation_id,
        state=found.state, exit=found.exit, merge_field=found.merge_field,
        dispatched_at=found.dispatched_at, ended_at=found.ended_at,
        offers=[OfferView(agent_id=o.agent_id, status=o.status) for o in found.offers])


CANCEL_STATUS = {"cancelled": 200, "already_resolved": 409, "not_found": 404, "invalid": 422}


@router.post(
    "/executions/{execution_id}/cancel", response_model=CancelResult, tags=["flow engines"],
    summary="Cancel: the flow engine gives up (hitl.cancel, §4); no exit is sent",
    responses={409: _error("`already_resolved`: the step had already ended; `state` and "
                           "`exit` say how.", CancelRefused),
               404: _error("`not_found`: no such execution.", CancelRefused), **TASK_ERRORS},
)
async def cancel(
    request: Request, execution_id: ExecutionId, _service: CurrentService,
    body: Annotated[CancelIn | None, Body(description="Optional: {\"reason\": \"…\"}.")] = None,
) -> Any:
    answer = await request.app.state.bridge.call(
        "hitl.cancel", execution_id=execution_id, reason=body.reason if body else "")
    result = {key: answer.get(key) for key in CancelResult.model_fields}
    outcome = str(answer.get("outcome"))
    code = CANCEL_STATUS.get(outcome, 502)
    if code == 200:
        return result
    detail = {
        "already_resolved": f"execution {execution_id!r} has already ended "
                            f"({answer.get('exit') or answer.get('state')})",
        "not_found": f"no execution {execution_id!r}",
        "invalid": str((answer.get("error") or {}).get("message") or "invalid cancel"),
    }.get(outcome, f"unexpected outcome {outcome!r}")
    raise Refused(code, detail, result)


# --- the agent directory ----------------------------------------------------------------------

DIRECTORY_STATUSES = get_args(DirectoryStatus)


def _directory_answer(agent_id: str, answer: dict[str, Any]) -> dict[str, Any]:
    """The §5 result, or the error it stands for."""
    status = answer.get("status")
    if status == "not_found":
        raise Refused(404, f"agent {agent_id!r} is not in the directory")
    if status not in DIRECTORY_STATUSES:
        message = (answer.get("error") or {}).get("message") or f"unexpected answer {answer!r}"
        raise Refused(422 if status == "invalid" else 502, str(message))
    return {"agent_id": answer.get("agent_id", agent_id), "status": status}


@router.put("/agents/{agent_id}", response_model=AgentAnswer, tags=["agent directory"],
            summary="Create or update an agent (hitl.upsert_agent, §5)",
            responses=TASK_ERRORS)
async def upsert_agent(request: Request, agent_id: AgentId, _service: CurrentService,
                       agent: AgentIn) -> Any:
    if agent.agent_id is not None and agent.agent_id != agent_id:
        raise Refused(422, f"body.agent_id {agent.agent_id!r} is not the path's agent "
                           f"{agent_id!r}; leave it out or make them the same")
    answer = await request.app.state.bridge.call(
        "hitl.upsert_agent", agent_id=agent_id, name=agent.name, status=agent.status,
        rule_groups=agent.rule_groups, capacity=agent.capacity)
    return _directory_answer(agent_id, answer)


@router.put("/agents/{agent_id}/status", response_model=AgentAnswer, tags=["agent directory"],
            summary="Set an agent's status (hitl.set_agent_status, §5)",
            responses={404: _error("No such agent in the directory."), **TASK_ERRORS})
async def set_agent_status(request: Request, agent_id: AgentId, _service: CurrentService,
                           change: StatusIn) -> Any:
    answer = await request.app.state.bridge.call(
        "hitl.set_agent_status", agent_id=agent_id, status=change.status)
    return _directory_answer(agent_id, answer)


@router.delete("/agents/{agent_id}", response_model=AgentAnswer, tags=["agent directory"],
               summary="Remove an agent (hitl.remove_agent, §5); an unknown one too",
               responses=TASK_ERRORS)
async def remove_agent(request: Request, agent_id: AgentId, _service: CurrentService) -> Any:
    answer = await request.app.state.bridge.call("hitl.remove_agent", agent_id=agent_id)
    return _directory_answer(agent_id, answer)


ConversationId = Annotated[str, Path(pattern=ID_PATTERN, max_length=128,
                                     description="The conversation's id (percent-decoded).")]


@router.post(
    "/conversations/{conversation_id}/release", response_model=ReleaseAnswer,
    tags=["agent directory"],
    summary="Release: take an agent (or everyone) out of the conversation's claimed_by, "
            "freeing capacity (hitl.release, §9)",
    responses={404: _error("No such conversation: nothing changed."), **TASK_ERRORS},
)
async def release(
    request: Request, conversation_id: ConversationId, _service: CurrentService,
    body: Annotated[ReleaseBody | None, Body(
        description="Optional: {\"agent_id\": \"…\"}; without it every agent is released.")
    ] = None,
) -> Any:
    answer = await request.app.state.bridge.call(
        "hitl.release", conversation_id=conversation_id,
        agent_id=body.agent_id if body else None)
    if answer.get("error"):
        raise Refused(422, str(answer["error"].get("message") or "invalid release"))
    if answer.get("claimed_by") is None:
        raise Refused(404, f"no conversation {conversation_id!r}")
    return {"conversation_id": conversation_id, "claimed_by": answer["claimed_by"]}


# --- wiring -----------------------------------------------------------------------------------

def install(app: FastAPI) -> None:
    """Serve the ``/v1`` routes and document the start body as the §1 model.

    The start route takes the body as a plain JSON object (the worker validates it, so that an
    invalid request is recorded, not refused unseen); its schema in ``/openapi.json`` is set to
    the §1 request model here.
    """
    app.include_router(router)
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = build()
        model = AssistanceRequest.model_json_schema(
            ref_template="#/components/schemas/{model}", mode="validation")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for name, definition in [*model.pop("$defs", {}).items(), ("AssistanceRequest", model)]:
            if components.get(name, definition) != definition:
                raise RuntimeError(f"two schemas named {name!r} in /openapi.json; rename one")
            components[name] = definition
        operation = schema["paths"]["/v1/executions"]["post"]
        operation["requestBody"]["content"]["application/json"]["schema"] = {
            "$ref": "#/components/schemas/AssistanceRequest"}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
