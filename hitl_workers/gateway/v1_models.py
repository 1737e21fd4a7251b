"""Bodies of the flow engines' HTTP interface (``/v1``, docs/contract.md §10): what
``/openapi.json`` documents for them.

The start request itself is the §1 model (:class:`hitl_workers.domain.request.AssistanceRequest`),
validated by the worker so that a bad one is recorded as failed rather than refused unseen.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
    WithJsonSchema,
)

from hitl_workers.domain.names import AgentStatus, ExitName, OfferStatus
from hitl_workers.domain.names import ExecutionState as State
from hitl_workers.domain.request import Identifier, Tag

DateTimeUtc = Annotated[
    datetime, PlainSerializer(lambda v: v.isoformat(), return_type=str),
    WithJsonSchema({"type": "string", "format": "date-time"})]
"""An aware UTC datetime, sent as ISO-8601 (``2026-11-24T10:15:02.123456+00:00``, as §2) and
documented as ``format: date-time`` so generated clients parse it."""


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StartResult(BaseModel):
    """The §1 task result: the execution as it stands once the worker has handled the request."""

    execution_id: str
    state: State
    exit: ExitName | None = Field(description="Set when the step ended at dispatch "
                                              "(e.g. `not_claimed` with `NO_AGENTS`).")
    duplicate: bool = Field(description="true: this execution already existed (a retry).")


class StartRefused(BaseModel):
    """A start that did not go through: what was wrong and, when an execution exists under
    that id, how it stands."""

    detail: str = Field(description="What was wrong, in words.")
    execution_id: str | None = None
    state: State | None = None
    exit: ExitName | None = None
    duplicate: bool | None = None
    code: str | None = Field(None, description="422: `invalid_request` (the §2 error code).")
    message: str | None = Field(None, description="422: a message naming each bad field.")
    fields: list[str] | None = Field(
        None, description="422: the bad fields' dotted paths, list indices as numbers "
                          "(`settings.popup.additional_timers.2.label`).")


class OfferView(BaseModel):
    agent_id: str
    status: OfferStatus


class ExecutionView(BaseModel):
    """One execution as it stands now (poll it to see the exit without a reply queue)."""

    execution_id: str
    conversation_id: str | None
    state: State
    exit: ExitName | None
    merge_field: dict[str, Any] | None = Field(description="The exit's merge field (§2).")
    dispatched_at: DateTimeUtc | None = Field(description="null for a request that failed "
                                                     "validation.")
    ended_at: DateTimeUtc | None = Field(description="When it exited, failed or was cancelled.")
    offers: list[OfferView] = Field(description="The agents offered the step, by agent id.")


class CancelIn(_Input):
    reason: str = Field("", description="Why the flow engine gives up (kept in the audit "
                                        "trail).")


CancelOutcome = Literal["cancelled", "already_resolved", "not_found", "invalid"]


class CancelResult(BaseModel):
    """The §4 result (the §3 shape)."""

    outcome: CancelOutcome
    execution_id: str | None
    state: State | None
    exit: ExitName | None
    merge_field: dict[str, Any] | None


class CancelRefused(CancelResult):
    detail: str


class AgentIn(_Input):
    """The §5 ``hitl.upsert_agent`` body; ``agent_id`` comes from the path (if given here too,
    it must be the same)."""

    agent_id: Identifier | None = None
    name: Annotated[str, StringConstraints(max_length=200)] = ""
    status: AgentStatus = "offline"
    rule_groups: list[list[Tag]] = Field(
        [], description="Tag groups; the agent sees a conversation whose tags include every "
                        "tag of one group (`[]` matches all; no groups: sees nothing).")
    capacity: int | None = Field(None, ge=1, le=1000, description=(
        "How many conversations the agent may hold claimed at once (§9); null: unlimited."))


DirectoryStatus = Literal["available", "busy", "offline", "removed"]


class AgentAnswer(BaseModel):
    """The §5 result, once the change is committed."""

    agent_id: str
    status: DirectoryStatus


class ReleaseBody(_Input):
    agent_id: Identifier | None = Field(None, description="The agent to take out of "
                                                          "`claimed_by`; null: every agent.")


class ReleaseAnswer(BaseModel):
    """The §9 ``hitl.release`` result."""

    conversation_id: str
    claimed_by: list[str] = Field(description="Who holds the conversation now.")
