"""The request a flow engine sends (CONTRACT.md §1), as validated models.

Unknown fields are refused everywhere except inside ``contact`` (free-form JSON shown to agents
as it is): a misspelt setting must fail loudly, never fall back to its default. Durations are
time strings, stored as seconds once validated.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
)

from hitl_workers.domain.timestrings import parse_duration

DAY_S = 24 * 3600.0
MAX_TIMEOUT_S = 30 * DAY_S
MAX_POPUP_S = DAY_S
MAX_REQUEST_BYTES = 256 * 1024
MAX_CONTACT_BYTES = 16 * 1024
MS_THRESHOLD = 10**11
"""``since`` above this is read as Unix milliseconds, below as seconds."""

ID_PATTERN = r"^[A-Za-z0-9._:@-]+$"
Identifier = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=ID_PATTERN)]
Tag = Annotated[str, StringConstraints(min_length=1, max_length=128)]
TaskName = Annotated[
    str, StringConstraints(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._:@-]+$")
]


def _duration(max_s: float) -> Any:
    def parse(value: Any) -> float:
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ValueError(f"expected a time string such as '30s' or '1h 30m', got {value!r}")
        return parse_duration(value, max_s=max_s)

    return BeforeValidator(parse)


TimeoutSeconds = Annotated[float, _duration(MAX_TIMEOUT_S)]
PopupSeconds = Annotated[float, _duration(MAX_POPUP_S)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ButtonSetting(_Strict):
    enabled: bool = True
    label: Annotated[str, StringConstraints(min_length=1, max_length=40)]


class Buttons(_Strict):
    claim: ButtonSetting = ButtonSetting(label="Claim")
    close: ButtonSetting = ButtonSetting(label="Close")
    reject: ButtonSetting = ButtonSetting(label="Reject")

    @field_validator("claim", "close", "reject", mode="before")
    @classmethod
    def _default_label(cls, value: Any, info: Any) -> Any:
        # A button given as {"enabled": false} keeps its default label.
        if isinstance(value, dict) and "label" not in value:
            return {**value, "label": info.field_name.capitalize()}
        return value

    def enabled(self) -> list[tuple[str, str]]:
        """The enabled buttons as (action, label), in the contract's order."""
        pairs = [("claim", self.claim), ("close", self.close), ("reject", self.reject)]
        return [(action, button.label) for action, button in pairs if button.enabled]


class CountdownSettings(_Strict):
    auto_action_timeout: PopupSeconds = 10.0


class AdditionalTimer(_Strict):
    label: Annotated[str, StringConstraints(min_length=1, max_length=60)]
    since: Annotated[float, Field(ge=0, allow_inf_nan=False)]

    @field_validator("since", mode="before")
    @classmethod
    def _number_not_bool(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("since must be a Unix timestamp (a number), not a boolean")
        return value

    @property
    def since_ms(self) -> int:
        return int(self.since if self.since > MS_THRESHOLD else self.since * 1000)


class PopupSettings(_Strict):
    text: Annotated[str, StringConstraints(max_length=20_000)] = ""
    buttons: Buttons = Buttons()
    display_for: PopupSeconds | None = None
    timer: CountdownSettings | None = None
    additional_timers: Annotated[list[AdditionalTimer], Field(max_length=2)] = []


class StepSettings(_Strict):
    allow_busy: bool = False
    allow_offline: bool = False
    specific_agent_id: Identifier | None = None
    browser_notification: bool = False
    popup: PopupSettings | None = None
    timeout: TimeoutSeconds = 300.0
    reject_policy: Literal["any", "all"] = "any"


class Conversation(_Strict):
    tags: Annotated[list[Tag], Field(max_length=50)] = []
    contact: dict[str, Any] | None = None

    @field_validator("contact")
    @classmethod
    def _contact_size(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and len(_json_bytes(value)) > MAX_CONTACT_BYTES:
            raise ValueError(f"contact is larger than {MAX_CONTACT_BYTES // 1024} KiB as JSON")
        return value


class ReplyTo(_Strict):
    task: TaskName
    queue: TaskName


class AssistanceRequest(_Strict):
    execution_id: Identifier
    conversation_id: Identifier
    flow_id: Identifier | None = None
    step_id: Identifier | None = None
    conversation: Conversation | None = None
    settings: StepSettings = StepSettings()
    reply_to: ReplyTo | None = None


class ExecutionRef(_Strict):
    """Just enough of a request to tie a failure to an execution and answer it."""

    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)
    execution_id: Identifier


class ReplyRef(_Strict):
    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)
    reply_to: ReplyTo | None = None


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def payload_size(value: Any) -> int:
    """Size of ``value`` as compact JSON; raises ValueError when it cannot be measured."""
    try:
        return len(_json_bytes(value))
    except (RecursionError, TypeError, ValueError) as exc:
        raise ValueError(f"payload is not plain JSON: {type(exc).__name__}") from exc
