"""Agent endpoints (docs/contract.md §8): notifications, bell list, status, claim/reject/close."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Annotated, Any

import redis.asyncio as aioredis
from fastapi import APIRouter, Body, Header, HTTPException, Path, Query, Request
from fastapi.responses import StreamingResponse

from hitl_workers.domain.names import AGENT_STATUSES
from hitl_workers.domain.request import ID_PATTERN
from hitl_workers.gateway import pending_popups, sse, telemetry
from hitl_workers.gateway.auth import CurrentAgent, PathAgent
from hitl_workers.gateway.errors import Refused
from hitl_workers.gateway.hub import StreamHub, TooManyStreams
from hitl_workers.gateway.models import (
    BellEntry,
    ErrorBody,
    EventError,
    EventIn,
    EventResult,
    Me,
    StatusIn,
    StatusOut,
)
from hitl_workers.gateway.rate_limit import RateLimitedAgent
from hitl_workers.store import bell
from hitl_workers.store.agent_load import agent_load
from hitl_workers.store.db import read_only

router = APIRouter()

AgentId = Annotated[str, Path(pattern=ID_PATTERN, max_length=128,
                              description="The agent's id (percent-decoded).")]
ExecutionId = Annotated[str, Path(pattern=ID_PATTERN, max_length=128,
                                  description="The execution's id (percent-decoded: "
                                              "`exec%3A1` is `exec:1`).")]
STREAMS_RETRY_S = 5
"""Retry-After for a stream refused over the cap: about when a closed one has let go."""
AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "No valid agent token (or its agent was removed)."},
    403: {"model": ErrorBody, "description": "The token is another agent's."},
}
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before trying again.",
                               "schema": {"type": "integer"}}}
LIMITED: dict[int | str, dict[str, Any]] = {
    429: {"model": ErrorBody, "headers": RETRY_AFTER,
          "description": "Over the agent's rate of events (HITL_GATEWAY_EVENT_RATE_PER_S)."}}
BODY_LIMIT: dict[int | str, dict[str, Any]] = {
    413: {"model": ErrorBody, "description": "The request body is over 64 KiB."}}
TASK_ERRORS: dict[int | str, dict[str, Any]] = {
    502: {"model": ErrorBody, "description": "The task failed in the worker."},
    503: {"model": ErrorBody, "description": "The broker is unavailable: the task was not sent."},
    504: {"model": ErrorBody, "description": "No worker answered within 20 s; the task may still "
                                             "run (repeat it with the same event_id)."},
}

# Outcome → HTTP status (§8). 200 for everything that went through.
EVENT_STATUS = {"claimed": 200, "already_claimed": 200, "rejected": 200,
                "reject_recorded": 200, "closed": 200, "already_resolved": 409,
                "not_eligible": 403, "at_capacity": 409, "not_found": 404, "invalid": 422}
EVENT_DETAIL = {
    "already_resolved": "the step has already ended ({how})",
    "not_eligible": "agent {agent} may not act on this conversation (not eligible, not the "
                    "specific agent, or not in an allowed status)",
    "at_capacity": "agent {agent} is at its capacity; release a conversation first (§9)",
    "not_found": "no execution {execution}, or it is not waiting",
    "invalid": "the event was refused as invalid",
}


async def _read(work: Any, *args: Any) -> Any:
    """A short read-only transaction, off the event loop."""
    def run() -> Any:
        with read_only() as conn:
            return work(conn, *args)
    return await asyncio.to_thread(run)


def _whoami(conn: Any, agent_id: str) -> dict[str, Any]:
    agent = bell.get_agent(conn, agent_id)
    # Read in the same transaction as the row: a load from after a removal never shows.
    held = agent_load(conn, agent_id) if agent else None
    return {"agent_id": agent_id, "name": agent.name if agent else None,
            "status": agent.status if agent else None,
            "capacity": held.capacity if held else None,
            "load": held.load if held else None}


@router.get("/me", response_model=Me, responses=AUTH_ERRORS, tags=["agents"],
            summary="The agent the token was issued for, with its load against its capacity")
async def whoami(me: CurrentAgent) -> dict[str, Any]:
    found: dict[str, Any] = await _read(_whoami, me)
    return found


@router.get(
    "/agents/{agent_id}/events", tags=["agents"], response_class=StreamingResponse,
    summary="The agent's notifications as Server-Sent Events",
    responses={**AUTH_ERRORS, 503: {
        "model": ErrorBody, "description": "The notification Redis is unavailable."}, 429: {
        "model": ErrorBody, "headers": RETRY_AFTER,
        "description": "The agent already has HITL_GATEWAY_MAX_STREAMS_PER_AGENT (5) open "
                       "event streams on this gateway."}, 200: {
        "description": "`text/event-stream`: per notification `id:` (the Redis Stream entry "
                       "id), `event:` (its `type`) and `data:` (its JSON, docs/contract.md §6); a "
                       "comment line at least every 15 s.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}}}},
)
async def events(
    request: Request,
    agent_id: AgentId,
    _me: PathAgent,
    last_event_id: Annotated[str | None, Query(
        pattern=sse.STREAM_ID.pattern,
        description="Resume after this stream id (as the Last-Event-ID header does).")] = None,
    last_event_id_header: Annotated[str | None, Header(
        alias="Last-Event-ID", pattern=sse.STREAM_ID.pattern,
        description="Sent by a reconnecting EventSource; wins over ?last_event_id=.")] = None,
) -> StreamingResponse:
    state = request.app.state
    hub: StreamHub = state.hub
    try:
        sub = hub.open(agent_id)
    except TooManyStreams as exc:
        raise HTTPException(429, str(exc), headers={"Retry-After": str(STREAMS_RETRY_S)}
                            ) from exc
    try:
        # Attached before "now" is pinned and before the catch-up: see gateway/hub.py.
        await hub.attach(sub)
        position = last_event_id_header or last_event_id
        if position is None:
            # "Now", pinned before the response starts: whatever is added after it is sent.
            position = await sse.current_position(state.redis, agent_id)
        else:
            telemetry.SSE_RESUMES.inc()
    except aioredis.RedisError as exc:
        hub.close(sub)
        raise HTTPException(503, f"notifications are unavailable ({type(exc).__name__}); "
                                 "retry shortly") from exc
    except BaseException:
        hub.close(sub)
        raise
    body = sse.stream_events(hub, sub, state.redis, position, keepalive_s=state.keepalive_s,
                             expires_at=request.state.token_expires_at)
    return EventStreamResponse(body, on_close=lambda: hub.close(sub))


class EventStreamResponse(StreamingResponse):
    """A ``text/event-stream`` response that gives its stream's slot back however it ends,
    even when the client left before the body started (the body's own ``finally`` never
    runs then)."""

    def __init__(self, body: Any, on_close: Callable[[], None]) -> None:
        super().__init__(body, media_type="text/event-stream", headers={
            "Cache-Control": "no-cache, no-store", "X-Accel-Buffering": "no"})
        self._on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


@router.get("/agents/{agent_id}/requests", response_model=list[BellEntry],
            response_model_exclude_unset=True, responses=AUTH_ERRORS, tags=["agents"],
            summary="The bell list: waiting executions this agent may claim now, oldest first")
async def bell_list(
    request: Request, agent_id: AgentId, _me: PathAgent,
    with_popups: Annotated[bool, Query(
        description="Also give each entry the `assistance.requested` notification (§6) that "
                    "announced it, as `notification` (null when it is no longer in the "
                    "stream): a console opened after the request shows its popup.")] = False,
) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = await _read(bell.bell_list, agent_id)
    if with_popups and entries:
        found = await pending_popups.latest_requests(
            request.app.state.redis, agent_id, {e["execution_id"] for e in entries})
        for entry in entries:
            entry["notification"] = found.get(entry["execution_id"])
    return entries


@router.put("/agents/{agent_id}/status", response_model=StatusOut, tags=["agents"],
            summary="Set the agent's status (hitl.set_agent_status)",
            responses={**AUTH_ERRORS, **BODY_LIMIT, **LIMITED, **TASK_ERRORS,
                       404: {"model": ErrorBody,
                             "description": "The agent left the directory meanwhile."}})
async def set_status(request: Request, agent_id: AgentId, _me: PathAgent,
                     _within_rate: RateLimitedAgent, change: StatusIn) -> dict[str, Any]:
    answer = await request.app.state.bridge.call("hitl.set_agent_status", agent_id=agent_id,
                                                 status=change.status)
    if answer.get("status") == "not_found":
        raise Refused(404, f"agent {agent_id!r} is not in the directory")
    if answer.get("status") not in AGENT_STATUSES:
        raise Refused(422, str((answer.get("error") or {}).get("message") or answer))
    return {"agent_id": agent_id, "status": answer["status"]}


EVENT_RESPONSES: dict[int | str, dict[str, Any]] = {
    **BODY_LIMIT, **LIMITED, **TASK_ERRORS,
    401: {"model": ErrorBody, "description": "No valid agent token (or its agent was removed)."},
    403: {"model": EventError, "description": "`not_eligible`: this agent may not act here."},
    404: {"model": EventError, "description": "`not_found`: no such waiting execution."},
    409: {"model": EventError,
          "description": "`already_resolved`: the step already ended; `exit` and "
                         "`merge_field` say how (a lost claim: `merge_field.addClaimedBy`). "
                         "`at_capacity` (a claim): the agent holds as many conversations as "
                         "its capacity allows; nothing changed."},
}


async def _agent_event(request: Request, action: str, execution_id: str, agent_id: str,
                       body: EventIn | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"execution_id": execution_id, "agent_id": agent_id}
    if body is not None and body.event_id is not None:
        kwargs["event_id"] = body.event_id
    answer = await request.app.state.bridge.call(f"hitl.{action}", **kwargs)
    outcome = str(answer.get("outcome"))
    telemetry.AGENT_EVENTS.labels(action, outcome).inc()
    result = {key: answer.get(key) for key in EventResult.model_fields}
    status = EVENT_STATUS.get(outcome, 502)
    if status == 200:
        return result
    how = answer.get("exit") or answer.get("state")
    winner = (answer.get("merge_field") or {}).get("addClaimedBy")
    if winner:
        how = f"claimed by {winner}"
    detail = EVENT_DETAIL.get(outcome, f"unexpected outcome {outcome!r}").format(
        how=how, agent=agent_id, execution=execution_id)
    if outcome == "invalid":
        detail = str((answer.get("error") or {}).get("message") or detail)
    raise Refused(status, detail, result)


OptionalEvent = Annotated[EventIn | None, Body(
    description="Optional: {\"event_id\": \"…\"} makes a retry safe.")]


@router.post("/executions/{execution_id}/claim", response_model=EventResult,
             responses=EVENT_RESPONSES, tags=["executions"],
             summary="Claim (hitl.claim); 200 claimed / already_claimed")
async def claim(request: Request, execution_id: ExecutionId, me: RateLimitedAgent,
                body: OptionalEvent = None) -> dict[str, Any]:
    return await _agent_event(request, "claim", execution_id, me, body)


@router.post("/executions/{execution_id}/reject", response_model=EventResult,
             responses=EVENT_RESPONSES, tags=["executions"],
             summary="Reject (hitl.reject); 200 rejected / reject_recorded")
async def reject(request: Request, execution_id: ExecutionId, me: RateLimitedAgent,
                 body: OptionalEvent = None) -> dict[str, Any]:
    return await _agent_event(request, "reject", execution_id, me, body)


@router.post("/executions/{execution_id}/close", response_model=EventResult,
             responses=EVENT_RESPONSES, tags=["executions"],
             summary="Close the popup (hitl.close); 200 closed")
async def close(request: Request, execution_id: ExecutionId, me: RateLimitedAgent,
                body: OptionalEvent = None) -> dict[str, Any]:
    return await _agent_event(request, "close", execution_id, me, body)
