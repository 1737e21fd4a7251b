"""The worker's main process refuses messages it cannot safely hand to its pool.

Celery's consumer (the worker's main process) decodes every message body before a task runs,
keeps the decoded arguments in the request and pickles them to the pool child. Python's pickle
and json recurse once per level of nesting, so a payload nested a few hundred levels deep —
``{"contact": [[[[…]]]]}``, 500 levels are enough — raises ``RecursionError`` in the *main
process*, outside any task: Celery treats it as unrecoverable and the whole worker exits. With
``task_acks_late`` the message then goes back to the queue and kills the next worker too.

:func:`refusal` says whether a message may go on: an unreadable Redis envelope
(:mod:`hitl_workers.tasks.envelope`), no string ``task``/``id`` header, no content type, a body
that cannot be decoded (bad JSON, too deep for the decoder, a content type we never accept such
as pickle), that is not Celery's ``[args, kwargs, embed]`` (Celery unpacks it in the main
process too) or that nests deeper than :data:`MAX_MESSAGE_DEPTH` is refused, kept as a dead
letter with why, and dropped. :class:`hitl_workers.tasks.consumer.GuardedConsumer` applies it to
every message the worker receives, whatever its task name. Everything shallower reaches the
task, whose validation refuses what the contract does not allow (``MAX_JSON_DEPTH`` levels for
a request) with an answer that names the field.
"""

from __future__ import annotations

import logging
import math
import reprlib
from collections.abc import Callable
from typing import Any

from celery import Task
from celery.exceptions import InvalidTaskError
from celery.utils.time import maybe_iso8601

from hitl_workers.clock import utcnow
from hitl_workers.store import repo
from hitl_workers.store.db import transaction

log = logging.getLogger(__name__)

MAX_MESSAGE_DEPTH = 200
"""Deeper messages are refused before anything recurses over them. Far above a valid request
(the domain refuses more than 100 levels, with the field's path), far below where pickle fails
in the main process (about 450 levels)."""
TOO_DEEP = (f"the message nests lists and objects more than {MAX_MESSAGE_DEPTH} levels deep; "
            f"it was refused before decoding it further could crash the worker")
UNDECODABLE = "the message body cannot be decoded"
DEAD_LETTER_CHARS = 64 * 1024


_CONTAINERS = (dict, list, tuple)


def nesting_depth(value: Any, limit: int) -> int:
    """How deep lists and objects nest in ``value`` (a scalar is 0); stops counting once past
    ``limit``. Iterative, so it is safe on any input.

    Level by level, keeping only the containers of each: every message the worker receives
    passes here, and most of what a message holds is scalars (ids, names, texts), which the
    walk no longer visits one by one (half the time of a walk that did, for a request)."""
    level = [value] if isinstance(value, _CONTAINERS) else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return depth
        below: list[Any] = []
        for item in level:
            below += [child for child in (item.values() if isinstance(item, dict) else item)
                      if isinstance(child, _CONTAINERS)]
        level = below
    return depth


def refusal(message: Any, body: Any = None) -> str | None:
    """Why the worker must not process ``message``, or None when it may. Never raises.

    ``body`` is the already decoded body (Celery passes one for protocol-1 messages only)."""
    try:
        return _refusal(message, body)
    except Exception as exc:  # a message odd enough to break the checks is refused too
        return f"the message could not be checked: {exc!r}"[:2000]


def _refusal(message: Any, body: Any) -> str | None:
    problem = getattr(message, "envelope_problem", None)
    if problem:
        return str(problem)
    headers = message.headers
    if not isinstance(headers, dict) or not isinstance(headers.get("task"), str):
        return ("the message has no task header (a string): only Celery message protocol 2 is "
                "accepted, with the task name in headers.task")
    if not isinstance(headers.get("id"), str):
        return "the message has no id header (a string): the task id is required"
    problem = header_problem(headers)
    if problem is not None:
        return problem
    if not message.content_type:
        return ("the message has no content-type; send content-type application/json and "
                "content-encoding utf-8")
    try:
        # Decoding caches the result on the message: Celery's own handler reuses it.
        payload = body if body is not None else message.payload
    except Exception as exc:  # DecodeError, ContentDisallowed, RecursionError wrapped by kombu
        return f"{UNDECODABLE}: {exc!r}"[:2000]
    if body is None and not _protocol2_shape(payload):
        # Celery unpacks it in the main process as (args, kwargs, embed): anything else raises
        # there (ValueError, TypeError) and, again, stops the whole worker.
        return "the message body is not a Celery protocol-2 [args, kwargs, embed] list"
    # Counted from the message: (headers, body) is one level, then the deeper of the two.
    if body is None and _text_shallower_than(message, MAX_MESSAGE_DEPTH):
        if nesting_depth(headers, MAX_MESSAGE_DEPTH - 1) > MAX_MESSAGE_DEPTH - 1:
            return TOO_DEEP
    elif nesting_depth((headers, payload), MAX_MESSAGE_DEPTH) > MAX_MESSAGE_DEPTH:
        return TOO_DEEP
    return None


def _text_shallower_than(message: Any, limit: int) -> bool:
    """Whether the JSON text of ``message``'s body has fewer opening brackets than ``limit``:
    then its decoded value cannot nest ``limit`` levels deep (each level is one ``[`` or
    ``{``; those inside strings only count too many). Counting them is C-speed; walking the
    decoded value is what the worker's main process spent most of its check of every
    message on (~15 µs of ~22 for a request, docs/benchmarks.md). The body kombu decoded is
    this text, decompressed already; in UTF-8, -16 or -32 every bracket keeps its byte."""
    if message.content_type != "application/json":
        return False
    text = message.body
    if isinstance(text, bytes | bytearray):
        return text.count(b"[") + text.count(b"{") < limit
    if isinstance(text, str):
        return text.count("[") + text.count("{") < limit
    return False


_TEXT_OR_NULL = ("root_id", "parent_id", "group", "shadow", "origin", "lang", "argsrepr",
                 "kwargsrepr", "reply_to", "correlation_id")
_WHOLE_NUMBER_OR_NULL = ("retries", "group_index", "replaced_task_nesting")


def header_problem(headers: dict[str, Any]) -> str | None:
    """What is wrong with a header Celery reads in the worker's main process (where a value of
    the wrong type raises outside any task and stops the worker), or None."""
    for name in ("eta", "expires"):
        value = headers.get(name)
        if value is not None and not _iso_datetime(value):
            return (f"the message's {name} header {_shown(value)} is not an ISO 8601 date and "
                    f"time (2026-01-31T12:00:00+00:00) or null")
    for name in _TEXT_OR_NULL:
        value = headers.get(name)
        if value is not None and not isinstance(value, str):
            return f"the message's {name} header {_shown(value)} is not a string or null"
    for name in _WHOLE_NUMBER_OR_NULL:
        value = headers.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            return f"the message's {name} header {_shown(value)} is not a whole number or null"
    limits = headers.get("timelimit")
    if limits is not None and not (
            isinstance(limits, list | tuple) and len(limits) == 2
            and all(v is None or (isinstance(v, int | float) and not isinstance(v, bool)
                                  and math.isfinite(v) and v >= 0) for v in limits)):
        return (f"the message's timelimit header {_shown(limits)} is not [soft, hard] (seconds "
                f"or null)")
    for name, kind, what in (("stamps", dict, "an object"), ("stamped_headers", list, "a list"),
                             ("ignore_result", bool, "true or false")):
        value = headers.get(name)
        if value is not None and not isinstance(value, kind):
            return f"the message's {name} header {_shown(value)} is not {what} or null"
    return None


def _iso_datetime(value: Any) -> bool:
    """Text Celery's own parser reads as a date and time (or as none: the empty string)."""
    if not isinstance(value, str):
        return False  # [] or 0 would pass the parser as "no date", then fail in the Request
    try:
        maybe_iso8601(value)
    except (ValueError, OverflowError):
        return False
    return True


def _shown(value: Any) -> str:
    return reprlib.repr(value)


def _protocol2_shape(payload: Any) -> bool:
    return (isinstance(payload, list | tuple) and len(payload) == 3
            and isinstance(payload[0], list | tuple) and isinstance(payload[1], dict)
            and (payload[2] is None or isinstance(payload[2], dict)))


def keep_dead_letter(message: Any, reason: str) -> None:
    """Record the refused message for an operator. Never raises: the consumer must go on."""
    headers = message.headers if isinstance(message.headers, dict) else {}
    try:
        body = message.body
    except Exception:  # pragma: no cover - kombu keeps the body as it arrived
        body = "(unreadable)"
    keep_raw_dead_letter(body, reason, task_name=headers.get("task"),
                         task_id=headers.get("id"))


def keep_raw_dead_letter(raw: Any, reason: str, *, task_name: Any = None, task_id: Any = None
                         ) -> None:
    """Record ``raw`` (bytes or text as it arrived) with why. Never raises."""
    try:
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes | bytearray) \
            else str(raw).encode("utf-8", "backslashreplace").decode("utf-8")
        text = text.replace("\x00", "\\x00")  # PostgreSQL text cannot hold NUL
        with transaction() as conn:
            repo.add_dead_letter(conn, task_name=str(task_name)[:200],
                                 task_id=str(task_id)[:200],
                                 payload=text[:DEAD_LETTER_CHARS], reason=reason, now=utcnow())
    except Exception as exc:  # the database is down: the log line below is all we can keep
        log.error("refused message %r not recorded as a dead letter (%s): %r", task_id, reason,
                  exc)


class GuardedTask(Task):  # type: ignore[misc]
    """A task whose messages pass :func:`refusal` in the worker's main process first.

    The worker's :class:`~hitl_workers.tasks.consumer.GuardedConsumer` (``worker_consumer`` in
    celeryconfig) already checks every message, whatever its task; this strategy checks only
    when the task runs under some other consumer, so a message is never checked twice."""

    def start_strategy(self, app: Any, consumer: Any, **kwargs: Any) -> Callable[..., Any]:
        handler: Callable[..., Any] = super().start_strategy(app, consumer, **kwargs)
        if getattr(consumer, "guards_every_message", False):
            return handler

        def guarded(message: Any, body: Any, ack: Any, reject: Any, callbacks: Any,
                    **rest: Any) -> Any:
            reason = refusal(message, body)
            if reason is not None:
                keep_dead_letter(message, reason)
                # The consumer logs this, drops the message (no redelivery: it would only be
                # refused again) and carries on with the next one.
                raise InvalidTaskError(reason)
            return handler(message, body, ack, reject, callbacks, **rest)

        return guarded
