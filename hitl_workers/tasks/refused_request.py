"""A ``hitl.request_assistance`` refused by the guard still gets its ``error`` exit.

The guard refuses a message nested too deep to hand to the pool before any task runs. For a
request that would leave the flow engine waiting forever, although the part that says which
execution it is and where to answer (``execution_id``, ``reply_to``) is perfectly readable at
the top level. :func:`answer_refused_request` reads just that top level, without recursing into
the deep part, and records the execution ``failed`` with one ``error`` exit naming the field
that holds the deep part (docs/contract.md, "Invalid requests").
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from hitl_workers.clock import utcnow
from hitl_workers.domain.request import MAX_JSON_DEPTH
from hitl_workers.domain.validation import salvage_execution_id
from hitl_workers.services import dispatch
from hitl_workers.settings import get_settings
from hitl_workers.tasks.guard import MAX_MESSAGE_DEPTH, TOO_DEEP, nesting_depth

log = logging.getLogger(__name__)

TASK = "hitl.request_assistance"
TOP_LEVEL_FIELDS = ("execution_id", "conversation_id", "flow_id", "step_id", "reply_to")
SHALLOW = 3
"""Deepest a top-level field we read may nest (``reply_to`` is an object of strings: 1)."""
KWARGS_LEVEL = 3
"""How deep the guard finds the kwargs object: inside (headers, body), inside the body list."""
FIELD_LEVELS = 2
"""How many object keys down the named field goes: ``conversation.contact``, not deeper into
the free-form contact (the contract names fields, not places inside them)."""


def answer_refused_request(message: Any) -> None:
    """Record a failed execution and its ``error`` exit for ``message``, a request refused for
    nesting too deep (to hand to the pool, or even to decode), when its top level allows.
    Never raises: the consumer must go on."""
    try:
        kwargs = _kwargs(message)
        if kwargs is None:
            return
        top_level = {key: kwargs[key] for key in TOP_LEVEL_FIELDS
                     if key in kwargs and nesting_depth(kwargs[key], SHALLOW) <= SHALLOW}
        if salvage_execution_id(top_level) is None:
            return  # the dead letter is all there is: no execution to fail, nobody to answer
        field = deep_field(kwargs)
        if field is None:  # the headers or positional arguments, not a field, are too deep
            field, problem = "(request)", f"(request): {TOO_DEEP}"
        else:
            problem = (f"{field}: nested too deeply; lists and objects may be nested at most "
                       f"{MAX_JSON_DEPTH} levels, counting the request itself (this message "
                       f"nests more than {MAX_MESSAGE_DEPTH}, so it was refused before any "
                       f"task ran)")
        _record(top_level, field, problem, message.headers.get("id"))
    except Exception as exc:  # the database is down: the dead letter and the log keep it
        log.error("refused request %r not answered: %r", _id(message), exc)


def _record(top_level: dict[str, Any], field: str, problem: str, task_id: Any) -> None:
    # Imported here: tasks.common imports the app, which imports this module's callers.
    from hitl_workers.tasks.common import after_commit, in_transaction

    settings = get_settings()
    defaults = dispatch.Defaults(settings.default_reply_task, settings.default_reply_queue,
                                 settings.timer_horizon_s, settings.webhook_policy())
    _answer, effects = in_transaction(lambda conn: dispatch.record_refused(
        conn, top_level, [field], problem, task_id=str(task_id), now=utcnow(),
        defaults=defaults))
    after_commit(effects)


def _kwargs(message: Any) -> dict[str, Any] | None:
    headers = message.headers
    if not isinstance(headers, dict) or headers.get("task") != TASK:
        return None
    try:
        payload = message.payload  # decoded (and cached) by the guard already
    except Exception:  # too deep for the JSON decoder itself: read it with the depth cut
        if message.content_type != "application/json":
            return None  # never anything but JSON (pickle stays unread)
        try:
            payload = shallow_loads(message.body, KEEP_DEPTH)
        except ValueError:
            return None  # not JSON at all: nothing to read
    kwargs = payload[1] if isinstance(payload, list | tuple) and len(payload) == 3 else None
    return kwargs if isinstance(kwargs, dict) else None


KEEP_DEPTH = MAX_MESSAGE_DEPTH + 10
"""A body too deep to decode is read with what nests deeper than this cut off: still deeper
than the guard's limit, so :func:`deep_field` finds the field, and shallow enough for the JSON
decoder."""

_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')
"""A JSON string (skipped whole, so brackets inside it do not count), or a bracket."""


def shallow_loads(body: bytes | str, keep_depth: int) -> Any:
    """``body`` (JSON) decoded with every list or object nested deeper than ``keep_depth``
    replaced by ``null``. One pass of a regular expression, no recursion, so any depth is safe.
    Raises ``ValueError`` when ``body`` is not JSON."""
    text = body.decode("utf-8") if isinstance(body, bytes | bytearray) else body
    kept: list[str] = []
    last, depth, cut_at = 0, 0, -1
    for token in _TOKENS.finditer(text):
        bracket = token.group()
        if bracket[0] == '"':
            continue
        if bracket in "[{":
            depth += 1
            if depth == keep_depth + 1:
                cut_at = token.start()
        else:
            if depth == keep_depth + 1 and cut_at >= 0:
                kept += [text[last:cut_at], "null"]
                last, cut_at = token.end(), -1
            depth -= 1
    kept.append(text[last:])
    return json.loads("".join(kept))


def deep_field(kwargs: dict[str, Any]) -> str | None:
    """The dotted name of the field that holds the part nested too deep, or None when no field
    of the request does (the message's headers or positional arguments were too deep)."""
    path: list[str] = []
    value: Any = kwargs
    while isinstance(value, dict) and len(path) < FIELD_LEVELS:
        # The guard counts from the message: (headers, body) > body list > kwargs > field.
        room = MAX_MESSAGE_DEPTH - KWARGS_LEVEL - len(path)
        deep = next((key for key, child in value.items()
                     if nesting_depth(child, room) > room), None)
        if deep is None:
            break
        path.append(str(deep))
        value = value[deep]
    return ".".join(path) or None


def _id(message: Any) -> Any:
    headers = message.headers
    return headers.get("id") if isinstance(headers, dict) else None
