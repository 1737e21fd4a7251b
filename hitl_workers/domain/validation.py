"""Turning a raw request into a model, or into errors that name each bad field."""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from hitl_workers.domain.request import (
    MAX_ADDITIONAL_TIMERS,
    MAX_REQUEST_BYTES,
    MAX_TAGS,
    AssistanceRequest,
    ExecutionRef,
    Path,
    ReplyRef,
    ReplyTo,
    json_problem,
    payload_size,
    too_many,
)
from hitl_workers.domain.webhooks import CONTEXT_KEY, WebhookPolicy

_MAX_PART_CHARS = 64
"""A path part (an unknown key, say) longer than this is shortened in messages."""
_MAX_SHOWN_PARTS = 8


@dataclass(frozen=True)
class FieldError:
    field: str
    """Dotted path, list indices as numbers: ``settings.popup.additional_timers.2.label``."""
    message: str


@dataclass(frozen=True)
class Invalid:
    errors: tuple[FieldError, ...]

    @property
    def fields(self) -> list[str]:
        return list(dict.fromkeys(e.field for e in self.errors))

    @property
    def message(self) -> str:
        return "; ".join(f"{e.field}: {e.message}" for e in self.errors)


_FRIENDLY = {
    "extra_forbidden": "unknown field (a misspelt setting is refused, not ignored)",
    "missing": "required",
}

# Lists whose length pydantic checks only once every item is valid (see request._at_most): when
# an item is bad, the count error is added here so that one answer names every problem.
_COUNTED: tuple[tuple[Path, int, str], ...] = (
    (("settings", "popup", "additional_timers"), MAX_ADDITIONAL_TIMERS, "additional timers"),
    (("conversation", "tags"), MAX_TAGS, "tags"),
)


_TYPES = {
    "bool_type": "must be true or false (a JSON boolean; a string such as \"true\" is refused)",
    "string_type": "must be a string",
    "float_type": "must be a number",
    "int_type": "must be a whole number",
    "list_type": "must be a list",
    "dict_type": "must be an object",
}


def _message(error: Any, model: type[BaseModel] | None) -> str:
    kind = error.get("type", "")
    loc = tuple(error.get("loc", ()))
    if kind == "extra_forbidden":
        parent = _model_at(model, loc[:-1]) if model is not None else None
        if parent is not None:
            return f"{_FRIENDLY[kind]}; accepted here: {', '.join(parent.model_fields)}"
    if kind in ("model_type", "model_attributes_type"):
        expected = _model_at(model, loc) if model is not None else None
        if expected is not None:
            return f"must be an object with the fields {', '.join(expected.model_fields)}"
        return "must be an object"
    if kind in _TYPES:
        return _TYPES[kind]
    if kind in _FRIENDLY:
        return _FRIENDLY[kind]
    if kind == "string_pattern_mismatch":
        return "must use only the characters A-Z a-z 0-9 . _ : @ -"
    text = str(error.get("msg", "invalid"))
    return text.removeprefix("Value error, ")


def field_errors(
    exc: ValidationError, model: type[BaseModel] | None = None
) -> tuple[FieldError, ...]:
    """One :class:`FieldError` per pydantic error; ``model`` (the validated model) lets an
    unknown field's message list the fields accepted in its place."""
    return tuple(
        FieldError(_dotted(tuple(error["loc"])), _message(error, model))
        for error in exc.errors(include_url=False, include_input=False)
    )


def validate_request(kwargs: dict[str, Any], *, webhooks: WebhookPolicy | None = None
                     ) -> AssistanceRequest | Invalid:
    """Validate a ``hitl.request_assistance`` payload (size first, so nothing huge is parsed).

    Never raises for bad input, however large, deep or odd: every problem is an :class:`Invalid`
    naming the field. ``webhooks``: which ``reply_to.webhook`` URLs this process accepts
    (none without it).
    """
    try:
        size: int | None = payload_size(kwargs)
    except ValueError:
        size = None  # not plain JSON (too deep, NaN, ...): json_problem says where
    if size is not None and size > MAX_REQUEST_BYTES:
        return Invalid((_too_large(f"is {size} bytes"),))
    # Unmeasured, it may still be huge: every JSON value takes at least one byte, so more values
    # than the byte limit is too large without looking further.
    found = json_problem(kwargs, max_nodes=None if size is not None else MAX_REQUEST_BYTES)
    if found is not None:
        path, problem = found
        if not path and size is None and problem.startswith("holds more"):
            return Invalid((_too_large("holds too many values"),))
        return Invalid((_json_error(path, problem),))
    if size is None:  # json.dumps failed on something json_problem accepts: should not happen
        return Invalid((FieldError("(request)", "the request is not plain JSON; send a JSON "
                                                "object of strings, numbers, lists and objects"),))
    try:
        return AssistanceRequest.model_validate(kwargs, context=_context(webhooks))
    except ValidationError as exc:
        return Invalid(_with_hidden_counts(kwargs, field_errors(exc, AssistanceRequest)))


def salvage_execution_id(kwargs: dict[str, Any]) -> str | None:
    """The request's ``execution_id`` when it is usable on its own, else None."""
    try:
        return ExecutionRef.model_validate(kwargs).execution_id
    except ValidationError:
        return None


def salvage_reply_to(kwargs: dict[str, Any], *, webhooks: WebhookPolicy | None = None
                     ) -> ReplyTo | bool | None:
    """The request's ``reply_to``: the model, None when absent, False when unusable (a
    webhook whose host is not allowed included: nothing is ever sent to it)."""
    try:
        return ReplyRef.model_validate(kwargs, context=_context(webhooks)).reply_to
    except ValidationError:
        return False


def _context(webhooks: WebhookPolicy | None) -> dict[str, Any]:
    return {CONTEXT_KEY: webhooks}


# --- helpers --------------------------------------------------------------------------------

def _too_large(what: str) -> FieldError:
    return FieldError("(request)", f"the request {what}; at most {MAX_REQUEST_BYTES // 1024} KiB "
                                   f"({MAX_REQUEST_BYTES} bytes) as compact JSON is accepted")


def _json_error(path: Path, problem: str) -> FieldError:
    """Name the request field that holds ``path`` (``conversation.contact`` for anything inside
    the free-form contact), and say exactly where inside it when that is deeper."""
    field = _field_prefix(path)
    if len(field) < len(path):
        problem = f"at {_dotted(path, shorten=True)}: {problem}"
    return FieldError(_dotted(field), problem)


def _with_hidden_counts(kwargs: dict[str, Any], errors: tuple[FieldError, ...]
                        ) -> tuple[FieldError, ...]:
    result = list(errors)
    for path, limit, what in _COUNTED:
        items = _lookup(kwargs, path)
        field = _dotted(path)
        if not isinstance(items, list) or len(items) <= limit:
            continue
        if any(e.field == field for e in result):
            continue
        inside = [i for i, e in enumerate(result) if e.field.startswith(field + ".")]
        result.insert(inside[0] if inside else len(result),
                      FieldError(field, too_many(limit, what, len(items))))
    return tuple(result)


def _lookup(value: Any, path: Path) -> Any:
    for part in path:
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _dotted(path: Path, *, shorten: bool = False) -> str:
    """``path`` as the contract's dotted form; unprintable characters escaped (a field name is
    stored and sent back, so it must itself be clean text), long parts shortened."""
    shown = path[:_MAX_SHOWN_PARTS] if shorten else path
    text = ".".join(_part(p) for p in shown)
    if len(shown) < len(path):
        text += "..."
    return text or "(request)"


def _part(part: str | int) -> str:
    if isinstance(part, int):
        return str(part)
    text = "".join(
        c if c.isprintable() and not 0xD800 <= ord(c) <= 0xDFFF else f"\\u{ord(c):04x}"
        for c in part[: _MAX_PART_CHARS + 1]
    )
    return text if len(part) <= _MAX_PART_CHARS else text[:_MAX_PART_CHARS - 3] + "..."


def _unwrap(kind: Any) -> Any:
    """``X``, from ``Annotated[X, ...]`` and ``X | None``."""
    while True:
        origin = get_origin(kind)
        if origin is Annotated:
            kind = get_args(kind)[0]
            continue
        if origin is Union or origin is types.UnionType:
            members = [a for a in get_args(kind) if a is not type(None)]
            if len(members) == 1:
                kind = members[0]
                continue
        return kind


def _walk(model: type[BaseModel], path: Path) -> tuple[int, Any]:
    """How many leading parts of ``path`` name schema fields, and the type they lead to."""
    kind: Any = model
    for i, part in enumerate(path):
        kind = _unwrap(kind)
        if isinstance(kind, type) and issubclass(kind, BaseModel) and isinstance(part, str):
            field = kind.model_fields.get(part)
            if field is None:
                return i, kind
            kind = field.annotation
        elif get_origin(kind) is list and isinstance(part, int):
            kind = get_args(kind)[0]
        else:
            return i, kind
    return len(path), _unwrap(kind)


def _field_prefix(path: Path) -> Path:
    known, kind = _walk(AssistanceRequest, path)
    if known < len(path) and isinstance(kind, type) and issubclass(kind, BaseModel) \
            and isinstance(path[known], str):
        known += 1  # an unknown field: name the field itself
    return path[:known]


def _model_at(model: type[BaseModel], path: Path) -> type[BaseModel] | None:
    known, kind = _walk(model, path)
    if known == len(path) and isinstance(kind, type) and issubclass(kind, BaseModel):
        return kind
    return None


M = TypeVar("M", bound=BaseModel)

POSITIONAL = FieldError("(args)", "positional arguments are not accepted; use keyword arguments")


def parse_kwargs(model: type[M], args: tuple[Any, ...], kwargs: dict[str, Any]) -> M | Invalid:
    """A task's keyword arguments as ``model``, or the errors naming each bad field."""
    if args:
        return Invalid((POSITIONAL,))
    try:
        return model.model_validate(kwargs)
    except ValidationError as exc:
        return Invalid(field_errors(exc, model))
