"""The request a flow engine sends (docs/contract.md §1), as validated models.

Unknown fields are refused everywhere except inside ``contact`` (free-form JSON shown to agents
as it is): a misspelt setting must fail loudly, never fall back to its default. Durations are
time strings, stored as seconds once validated.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from hitl_workers.domain import webhooks
from hitl_workers.domain.names import OfferOrder, OfferStrategy, OnMissed
from hitl_workers.domain.timestrings import parse_duration

DAY_S = 24 * 3600.0
MAX_TIMEOUT_S = 30 * DAY_S
MAX_POPUP_S = DAY_S
MAX_REQUEST_BYTES = 256 * 1024
MAX_CONTACT_BYTES = 16 * 1024
MS_THRESHOLD = 10**11
"""``since`` above this is read as Unix milliseconds, below as seconds."""
MAX_ADDITIONAL_TIMERS = 2
MAX_TAGS = 50
MAX_JSON_DEPTH = 100
"""Lists and objects nested deeper than this, counting the request itself, are refused.

The contract sets no depth, only sizes; but JSON nested a few hundred levels deep breaks
``json.dumps`` (a RecursionError) in whichever later layer serializes it first, at a depth that
depends on that layer's stack. A fixed, generous limit makes it a validation error instead.
"""
_MAX_INT_BITS = 14_000
"""Python refuses to print integers of more than 4300 digits (about 14,284 bits)."""

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


def _duration_schema(limit: str) -> Any:
    # What a client sends (a time string or a number of seconds), not the float it becomes.
    return WithJsonSchema({
        "anyOf": [{"type": "string", "minLength": 1}, {"type": "number", "exclusiveMinimum": 0}],
        "description": f"A time string ('30s', '1h 30m', 'PT1M30S') or seconds; positive, "
                       f"at most {limit}.",
    }, mode="validation")


TimeoutSeconds = Annotated[float, _duration(MAX_TIMEOUT_S), _duration_schema("30 days")]
PopupSeconds = Annotated[float, _duration(MAX_POPUP_S), _duration_schema("24 hours")]


def _at_most(limit: int, what: str) -> Any:
    # An after-check rather than Field(max_length=...): pydantic refuses a too-long list before
    # looking at its items, so a bad ``additional_timers.2.label`` would go unreported.
    # validation.py adds this same error when an item's error hides it.
    def check(items: list[Any]) -> list[Any]:
        if len(items) > limit:
            raise ValueError(too_many(limit, what, len(items)))
        return items

    return AfterValidator(check)


def too_many(limit: int, what: str, count: int) -> str:
    return f"at most {limit} {what} are accepted, got {count}"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _label_optional(schema: dict[str, Any]) -> None:
    # Buttons fills in a missing label (below), so a client may leave it out.
    schema["required"] = [f for f in schema.get("required", []) if f != "label"]
    if not schema["required"]:
        del schema["required"]


class ButtonSetting(_Strict):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True,
                              json_schema_extra=_label_optional)
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
        # round, not int: 1.005 * 1000 is 1004.9999999999999 in floating point.
        return round(self.since if self.since > MS_THRESHOLD else self.since * 1000)


class PopupSettings(_Strict):
    text: Annotated[str, StringConstraints(max_length=20_000)] = ""
    buttons: Buttons = Buttons()
    display_for: PopupSeconds | None = None
    timer: CountdownSettings | None = None
    additional_timers: Annotated[
        list[AdditionalTimer], _at_most(MAX_ADDITIONAL_TIMERS, "additional timers")
    ] = []


MIN_OFFER_TIMEOUT_S = 1.0


def _offer_timeout(value: float) -> float:
    if value < MIN_OFFER_TIMEOUT_S:
        raise ValueError(f"offer_timeout must be at least 1s, got {value:g}s")
    return value


OfferSeconds = Annotated[float, _duration(DAY_S), AfterValidator(_offer_timeout),
                         WithJsonSchema({
                             "anyOf": [{"type": "string", "minLength": 1},
                                       {"type": "number", "minimum": 1}],
                             "description": "A time string ('30s', '2m') or seconds; 1 s to "
                                            "24 hours."}, mode="validation")]


class OfferSettings(_Strict):
    """§9 "Offer strategy": broadcast (§1's fan-out) or one agent at a time."""

    strategy: OfferStrategy = "broadcast"
    offer_timeout: OfferSeconds = 30.0
    order: OfferOrder = "longest_idle"
    on_missed: OnMissed = "keep"


class StepSettings(_Strict):
    allow_busy: bool = False
    allow_offline: bool = False
    specific_agent_id: Identifier | None = None
    browser_notification: bool = False
    popup: PopupSettings | None = None
    timeout: TimeoutSeconds = 300.0
    reject_policy: Literal["any", "all"] = "any"
    priority: Annotated[int, Field(ge=0, le=9, description=(
        "§9: 0–9, higher first in the bell list and in what a freed agent is offered; "
        "absent means 0. A step that gives it (or `offer`) has its offers follow "
        "eligibility while it waits."))] | None = None
    offer: OfferSettings | None = Field(None, description=(
        "§9: broadcast (the default) or sequential offers. A step that gives it has its "
        "offers follow eligibility while it waits."))

    @model_validator(mode="wrap")
    @classmethod
    def _sequential_not_specific(cls, data: Any, handler: Any) -> StepSettings:
        settings: StepSettings = handler(data)
        if (settings.offer is not None and settings.offer.strategy == "sequential"
                and settings.specific_agent_id is not None):
            # One named agent leaves nobody to pass the offer on to (§9).
            raise ValidationError.from_exception_data("StepSettings", [InitErrorDetails(
                type=PydanticCustomError(
                    "sequential_specific",
                    "sequential offers go to one agent after another; not accepted together "
                    "with specific_agent_id"),
                loc=("offer", "strategy"), input=data)])
        return settings


class Conversation(_Strict):
    tags: Annotated[list[Tag], _at_most(MAX_TAGS, "tags")] = []
    contact: dict[str, Any] | None = None

    @field_validator("contact")
    @classmethod
    def _contact_size(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and len(_json_bytes(value)) > MAX_CONTACT_BYTES:
            raise ValueError(
                f"contact is {len(_json_bytes(value))} bytes as JSON; "
                f"at most {MAX_CONTACT_BYTES // 1024} KiB ({MAX_CONTACT_BYTES} bytes) is accepted"
            )
        return value


def _one_target(schema: dict[str, Any]) -> None:
    schema["oneOf"] = [{"required": ["task", "queue"], "not": {"required": ["webhook"]}},
                       {"required": ["webhook"], "not": {"anyOf": [
                           {"required": ["task"]}, {"required": ["queue"]}]}}]


class ReplyTo(_Strict):
    """Where the exit goes: a Celery task on a queue (§2), or a webhook URL (§10)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True,
                              json_schema_extra=_one_target)
    task: TaskName | None = None
    queue: TaskName | None = None
    webhook: Annotated[str, StringConstraints(min_length=1)] | None = Field(
        None, description="An https:// URL (http:// for a host listed by name) whose host is "
                          "in HITL_WEBHOOK_ALLOWED_HOSTS: the exit is POSTed there (§10).")

    @field_validator("webhook")
    @classmethod
    def _allowed_webhook(cls, value: str | None, info: ValidationInfo) -> str | None:
        # The allow-list is the process's setting, passed as validation context; without
        # one (a caller that did not say) no webhook is accepted.
        if value is None:
            return None
        policy = (info.context or {}).get(webhooks.CONTEXT_KEY)
        return webhooks.check_url(value, policy)

    @model_validator(mode="wrap")
    @classmethod
    def _task_and_queue_or_webhook(cls, data: Any, handler: Any) -> ReplyTo:
        reply: ReplyTo = handler(data)
        if reply.webhook is not None:
            clash = [f for f in ("task", "queue") if getattr(reply, f) is not None]
            if clash:
                raise _field_errors(data, clash, "not accepted together with webhook: give "
                                                 "either task and queue, or webhook")
        else:
            # Reported as the missing field's own error (``reply_to.queue: required``).
            missing = [f for f in ("task", "queue") if getattr(reply, f) is None]
            if missing:
                raise _field_errors(data, missing, "required (or give webhook instead of "
                                                   "task and queue)")
        return reply


def _field_errors(data: Any, fields: list[str], message: str) -> ValidationError:
    return ValidationError.from_exception_data("ReplyTo", [
        InitErrorDetails(type=PydanticCustomError("reply_target", message), loc=(field,),
                         input=data) for field in fields])


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


Path = tuple[str | int, ...]


# One walk with a check per kind of JSON value: splitting it would scatter the refusal rules.
def json_problem(value: Any, *, max_nodes: int | None = None) -> tuple[Path, str] | None:  # noqa: C901
    """The first thing found in ``value`` that is not plain, storable JSON.

    Returns its path and what is wrong, or None. Iterative, so any depth is safe to inspect.
    Refused: nesting deeper than :data:`MAX_JSON_DEPTH`; text with the NUL character or lone
    surrogates (PostgreSQL's ``jsonb`` cannot store them, and they are not UTF-8); NaN and
    infinities (not JSON); integers too long to print; keys that are not strings; anything that
    is not a JSON type. With ``max_nodes``, more values than that is a problem too (at the root).
    """
    # Depth-first, in document order (a dict's keys are all checked before its values). Each
    # entry carries its depth and its path as a chain (parent chain, key): the path tuple is
    # built only for the value a problem is found in, not for every value walked.
    stack: list[tuple[Any, int, _Trail]] = [(value, 0, None)]
    nodes = 0
    while stack:
        item, depth, trail = stack.pop()
        nodes += 1
        if max_nodes is not None and nodes > max_nodes:
            return (), f"holds more than {max_nodes} values"
        kind = _KINDS.get(type(item)) or _kind_of(item)
        if kind == "text":
            # Inline, the common case (ASCII, no NUL): the only text check that applies.
            problem = None if item.isascii() and "\x00" not in item \
                else _text_problem(item, "text")
            if problem is not None:
                return _path(trail), problem
        elif kind == "int":
            if item.bit_length() > _MAX_INT_BITS:
                return _path(trail), ("integer is too large; numbers of up to 4,000 digits "
                                      "are accepted")
        elif kind == "float":
            if not math.isfinite(item):
                return _path(trail), f"{item!r} is not JSON; only finite numbers are accepted"
        elif kind == "object" or kind == "array":
            if depth >= MAX_JSON_DEPTH:
                return _path(trail), (
                    f"nested too deeply; lists and objects may be nested at most "
                    f"{MAX_JSON_DEPTH} levels, counting the request itself"
                )
            below = depth + 1
            children: list[tuple[Any, int, _Trail]]
            if kind == "object":
                children = []
                for key, child in item.items():
                    if type(key) is not str and not isinstance(key, str):
                        return _path(trail), (f"key {key!r} is not a string; object keys must "
                                              f"be strings")
                    problem = None if key.isascii() and "\x00" not in key \
                        else _text_problem(key, "this key")
                    if problem is not None:
                        return (*_path(trail), key), problem
                    children.append((child, below, (trail, key)))
            else:  # a tuple is what json.dumps makes a list
                children = [(child, below, (trail, index)) for index, child in enumerate(item)]
            stack.extend(reversed(children))
        elif kind == "other":
            return _path(trail), f"a {type(item).__name__} is not JSON; use strings, " \
                "numbers, booleans, null, lists and objects"
    return None


_Trail = tuple[Any, str | int] | None
"""A path as a chain: None at the root, else (the parent's chain, the key or index)."""

_KINDS: dict[type, str] = {str: "text", dict: "object", list: "array", tuple: "array",
                           int: "int", float: "float", bool: "plain", type(None): "plain"}
"""The walk's kind of each exact JSON type (one lookup); subclasses go to :func:`_kind_of`."""


def _kind_of(item: Any) -> str:
    # In the order the checks always ran: bool before int, as bool is an int subclass.
    if isinstance(item, str):
        return "text"
    if item is None or isinstance(item, bool):
        return "plain"
    if isinstance(item, int):
        return "int"
    if isinstance(item, float):
        return "float"
    if isinstance(item, dict):
        return "object"
    if isinstance(item, list | tuple):
        return "array"
    return "other"


def _path(trail: _Trail) -> Path:
    parts: list[str | int] = []
    while trail is not None:
        trail, part = trail
        parts.append(part)
    return tuple(reversed(parts))


def _text_problem(text: str, what: str) -> str | None:
    if text.isascii():  # no surrogate can be ASCII: only the NUL check applies (fast)
        return None if "\x00" not in text else (
            f"{what} contains the NUL character (U+0000), which cannot be stored; remove it")
    if "\x00" in text:
        return f"{what} contains the NUL character (U+0000), which cannot be stored; remove it"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return f"{what} is not valid Unicode (a lone surrogate such as \\ud800); send UTF-8 text"
    return None
