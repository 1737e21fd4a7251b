"""Turning a raw request into a model, or into errors that name each bad field."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from hitl_workers.domain.request import (
    MAX_REQUEST_BYTES,
    AssistanceRequest,
    ExecutionRef,
    ReplyRef,
    ReplyTo,
    payload_size,
)


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


def _message(error: Any) -> str:
    kind = error.get("type", "")
    if kind in _FRIENDLY:
        return _FRIENDLY[kind]
    if kind == "string_pattern_mismatch":
        return "must use only the characters A-Z a-z 0-9 . _ : @ -"
    text = str(error.get("msg", "invalid"))
    return text.removeprefix("Value error, ")


def field_errors(exc: ValidationError) -> tuple[FieldError, ...]:
    errors = []
    for error in exc.errors(include_url=False, include_input=False):
        path = ".".join(str(part) for part in error["loc"]) or "(request)"
        errors.append(FieldError(path, _message(error)))
    return tuple(errors)


def validate_request(kwargs: dict[str, Any]) -> AssistanceRequest | Invalid:
    """Validate a ``hitl.request_assistance`` payload (size first, so nothing huge is parsed)."""
    try:
        size = payload_size(kwargs)
    except ValueError as exc:
        return Invalid((FieldError("(request)", str(exc)),))
    if size > MAX_REQUEST_BYTES:
        return Invalid((FieldError(
            "(request)", f"request is {size} bytes; the limit is {MAX_REQUEST_BYTES // 1024} KiB"
        ),))
    try:
        return AssistanceRequest.model_validate(kwargs)
    except ValidationError as exc:
        return Invalid(field_errors(exc))


def salvage_execution_id(kwargs: dict[str, Any]) -> str | None:
    """The request's ``execution_id`` when it is usable on its own, else None."""
    try:
        return ExecutionRef.model_validate(kwargs).execution_id
    except ValidationError:
        return None


def salvage_reply_to(kwargs: dict[str, Any]) -> ReplyTo | None | bool:
    """The request's ``reply_to``: the model, None when absent, False when unusable."""
    try:
        return ReplyRef.model_validate(kwargs).reply_to
    except ValidationError:
        return False
