"""The gateway's request and response bodies: what ``/openapi.json`` documents.

Bodies refuse unknown fields (a misspelt ``event_id`` must fail, not be ignored) and wrong
types, like the Celery contract they front.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, WithJsonSchema

from hitl_workers.domain.names import AgentStatus
from hitl_workers.domain.names import EventOutcome as Outcome
from hitl_workers.domain.names import ExecutionState as State
from hitl_workers.domain.request import Identifier

UtcIso = Annotated[datetime, PlainSerializer(lambda v: v.isoformat(), return_type=str),
                   WithJsonSchema({"type": "string", "format": "date-time"})]
"""An aware UTC datetime, sent as ISO-8601 (``2026-11-24T10:15:02.123456+00:00``, as §2)."""


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StatusIn(_Input):
    status: AgentStatus


class StatusOut(BaseModel):
    agent_id: str
    status: AgentStatus


class EventIn(_Input):
    event_id: Identifier | None = Field(
        None, description="Unique per agent: a repeat returns the first answer verbatim.")


class EventResult(BaseModel):
    """The §3 result of ``hitl.claim`` / ``hitl.reject`` / ``hitl.close``."""

    outcome: Outcome
    execution_id: str | None
    state: State | None
    exit: str | None = Field(description="The execution's exit once it has one.")
    merge_field: dict[str, Any] | None = Field(
        description="The exit's merge field, e.g. {\"addClaimedBy\": \"agent-7\"}.")


class ErrorBody(BaseModel):
    detail: str = Field(description="What was wrong, in words.")


class EventError(EventResult):
    """An event that did not go through: what was wrong, and the §3 result that says so."""

    detail: str


class ValidationIssue(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ValidationErrorBody(ErrorBody):
    errors: list[ValidationIssue]


class BellEntry(BaseModel):
    execution_id: str
    conversation_id: str | None
    contact: dict[str, Any] | None
    dispatched_at: UtcIso
    countdown_until_ms: int | None
    timeout_at: UtcIso | None
    notification: dict[str, Any] | None = Field(
        None, description="Only with ?with_popups=true: the `assistance.requested` "
                          "notification (docs/contract.md §6) that announced this entry, or null.")


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(description="database, broker, notifications: ok or why not")
    detail: str | None = None


class Me(BaseModel):
    agent_id: str
    name: str | None = Field(description="null when the agent is not in the directory")
    status: AgentStatus | None
    capacity: int | None = Field(
        description="How many conversations the agent may hold claimed at once "
                    "(docs/contract.md §9); null: unlimited, or not in the directory")
    load: int | None = Field(
        description="How many conversations hold the agent in their `claimed_by` now (§9); "
                    "null when the agent is not in the directory")


class DevToken(BaseModel):
    agent_id: str
    token: str


class ConsoleConfig(BaseModel):
    dev_login: bool
