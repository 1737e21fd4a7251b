"""What the system sends out (docs/contract.md §1–§6): task results, the exit message and the
agents' notifications, as models.

The inputs are validated by their own models (``domain/request.py`` for the request, the
``*In`` models of the services for the other tasks); these describe the outputs, so that
``hitl-workers schema`` can publish one JSON Schema per message from models rather than prose.
They are plain descriptions: ``extra="forbid"`` so a field added to an output without its model
fails the schema tests (tests/unit/test_schema.py, tests/clients).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

from hitl_workers.domain.request import Identifier

ExecutionState = Literal["waiting", "exited", "cancelled", "failed"]
ExitName = Literal["claimed", "not_claimed", "timer_action", "timeout", "error"]
Outcome = Literal["claimed", "already_claimed", "rejected", "reject_recorded", "closed",
                  "already_resolved", "not_eligible", "at_capacity", "not_found", "cancelled",
                  "invalid"]
AgentStatus = Literal["available", "busy", "offline"]


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ErrorDetail(_Out):
    """Why a request or an event was refused (or a step failed)."""

    code: str = Field(description="`invalid_request`, `conversation_busy`, `event_id_reused`, …")
    message: str = Field(description="Names each bad field and what was wrong with it.")
    fields: list[str] = Field(description="Dotted paths, list indices as numbers: "
                                          "`settings.popup.additional_timers.2.label`.")


# --- §1, §3, §4, §5: task results ------------------------------------------------------------

class RequestResult(_Out):
    """The result of ``hitl.request_assistance``: the execution as it stands."""

    execution_id: Identifier | None = Field(description="Null only for a request without a "
                                                        "usable execution_id (a dead letter).")
    state: ExecutionState
    exit: ExitName | None
    duplicate: bool = Field(description="This execution already existed (a retry).")
    error: ErrorDetail | None = Field(None, description="Present only when the request had no "
                                                        "usable execution_id.")


class EventResult(_Out):
    """The result of ``hitl.claim``, ``hitl.reject``, ``hitl.close`` and ``hitl.cancel``."""

    outcome: Outcome
    execution_id: str | None = Field(description="The execution acted on; for `not_found`, "
                                                 "the id given, or null.")
    state: ExecutionState | None
    exit: ExitName | None
    merge_field: dict[str, Any] | None = Field(description="The exit's merge field (§2) once "
                                                           "the execution has one.")
    error: ErrorDetail | None = Field(None, description="Present only for outcome `invalid`.")


class DirectoryResult(_Out):
    """The result of ``hitl.upsert_agent``, ``hitl.set_agent_status``, ``hitl.remove_agent``."""

    agent_id: str | None
    status: AgentStatus | Literal["removed", "not_found", "invalid"]
    error: ErrorDetail | None = Field(None, description="Present only for status `invalid`.")


class ReleaseResult(_Out):
    """The result of ``hitl.release`` (§9): who holds the conversation now."""

    conversation_id: str | None
    claimed_by: list[str] | None = Field(description="The agents the conversation is claimed "
                                                     "by after the release; null for an "
                                                     "unknown conversation (nothing changed).")
    error: ErrorDetail | None = Field(None, description="Present only for an invalid request.")


# --- §2: the exit message --------------------------------------------------------------------

class ClaimedBy(_Out):
    addClaimedBy: Identifier  # the contract's camelCase name


class NotClaimed(_Out):
    reason: Literal["NO_AGENTS", "NOT_AVAILABLE"]


class Rejected(_Out):
    reason: Literal["REJECTED"]
    rejectedBy: list[Identifier]  # the contract's camelCase name


class Nothing(_Out):
    """An empty merge field: ``{}``."""


class Failed(_Out):
    error: ErrorDetail


class _ExitBase(_Out):
    execution_id: Identifier
    conversation_id: str | None = Field(description="Null only for an `error` exit of a "
                                                    "request whose conversation_id was unusable.")
    flow_id: str | None
    step_id: str | None
    exited_at: str = Field(description="ISO-8601, UTC.", json_schema_extra={"format": "date-time"})


class ClaimedExit(_ExitBase):
    exit: Literal["claimed"]
    merge_field: ClaimedBy


class NotClaimedExit(_ExitBase):
    exit: Literal["not_claimed"]
    merge_field: NotClaimed | Rejected


class TimerActionExit(_ExitBase):
    exit: Literal["timer_action"]
    merge_field: Nothing


class TimeoutExit(_ExitBase):
    exit: Literal["timeout"]
    merge_field: Nothing


class ErrorExit(_ExitBase):
    exit: Literal["error"]
    merge_field: Failed


class ExitMessage(RootModel[Annotated[ClaimedExit | NotClaimedExit | TimerActionExit
                                      | TimeoutExit | ErrorExit, Field(discriminator="exit")]]):
    """The keyword arguments of the exit message: exactly one per execution."""


# --- §6: agent notifications -----------------------------------------------------------------

class PopupButton(_Out):
    action: Literal["claim", "close", "reject"]
    label: str


class PopupTimer(_Out):
    label: str
    since_ms: int


class Popup(_Out):
    text: str = Field(description="The popup's Markdown, as sent.")
    html: str = Field(description="The Markdown rendered to sanitized HTML.")
    buttons: list[PopupButton] = Field(description="The enabled buttons, in the order claim, "
                                                   "close, reject.")
    display_until_ms: int | None
    countdown_until_ms: int | None = Field(description="When the auto action fires (Unix ms).")
    timers: list[PopupTimer]


class SequentialOfferInfo(_Out):
    strategy: Literal["sequential"]
    round: int = Field(description="1 for the first pass over the agents, then 2, …")
    expires_at: str = Field(description="ISO 8601 UTC: the offer passes on to the next agent "
                                        "at this moment unless claimed or rejected.")


class AssistanceRequested(_Out):
    type: Literal["assistance.requested"]
    id: str = Field(description="Deduplicate on it: delivery is at least once.")
    execution_id: Identifier
    conversation_id: Identifier
    contact: dict[str, Any] | None = Field(description="As the flow engine sent it.")
    browser_notification: bool
    dispatched_at_ms: int
    popup: Popup | None
    offer: SequentialOfferInfo | None = Field(None, description=(
        "§9: present only on a sequential offer, made to this agent alone."))


class AssistanceWithdrawn(_Out):
    type: Literal["assistance.withdrawn"]
    id: str = Field(description="Deduplicate on it: delivery is at least once.")
    execution_id: Identifier
    conversation_id: str | None
    state: Literal["waiting", "exited", "cancelled"] = Field(
        description="`waiting`: the step goes on without this agent (it was removed, can no "
                    "longer claim it, or its sequential offer passed on).")
    exit: ExitName | None
    claimed_by: str | None


class Notification(RootModel[Annotated[AssistanceRequested | AssistanceWithdrawn,
                                       Field(discriminator="type")]]):
    """The JSON in the ``event`` field of an entry of the Redis Stream ``hitl:agent:<id>``."""
