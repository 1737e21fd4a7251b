"""``hitl.request_assistance``: validate, record, offer to agents, arm the deadlines."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any

from sqlalchemy.engine import Connection

from hitl_workers.domain.digest import request_digest
from hitl_workers.domain.eligibility import Audience, select_agents
from hitl_workers.domain.request import AssistanceRequest, ReplyTo
from hitl_workers.domain.sequence import Sequential, next_holder
from hitl_workers.domain.validation import (
    Invalid,
    salvage_execution_id,
    salvage_reply_to,
    validate_request,
)
from hitl_workers.domain.webhooks import WEBHOOK_REPLY_TASK, WebhookPolicy
from hitl_workers.notify import events as notifications
from hitl_workers.services import sequence
from hitl_workers.services.effects import (
    Effects,
    FirstOffer,
    OffersChanged,
    OutboxMessage,
    StepEnded,
)
from hitl_workers.services.transitions import exit_message_for
from hitl_workers.store import dispatching, repo, sequential

MAX_SKIPPED_IN_AUDIT = 200
DEAD_LETTER_PAYLOAD_CHARS = 64 * 1024


@dataclass(frozen=True)
class Defaults:
    reply_task: str
    reply_queue: str
    timer_horizon_s: float
    webhooks: WebhookPolicy | None = None
    """Which ``reply_to.webhook`` URLs are accepted (none when None)."""


def result(execution_id: str | None, state: str, exit: str | None, duplicate: bool
           ) -> dict[str, Any]:
    return {"execution_id": execution_id, "state": state, "exit": exit, "duplicate": duplicate}


def submit(conn: Connection, args: tuple[Any, ...], kwargs: dict[str, Any], *,
           task_id: str | None, now: datetime, defaults: Defaults
           ) -> tuple[dict[str, Any], Effects]:
    """Handle one request in one transaction. Never raises for bad input."""
    if args:
        problem = Invalid(())
        reason = "positional arguments are not accepted; send the request as keyword arguments"
        if not kwargs:
            return _dead_letter(conn, args, kwargs, reason, task_id, now)
        return _record_invalid(conn, kwargs, reason, ["(args)"], now, defaults, problem)
    checked = validate_request(kwargs, webhooks=defaults.webhooks)
    if isinstance(checked, Invalid):
        return _record_invalid(conn, kwargs, checked.message, checked.fields, now, defaults,
                               checked, task_id=task_id)
    return _dispatch(conn, checked, now, defaults)


def _dead_letter(conn: Connection, args: tuple[Any, ...], kwargs: dict[str, Any], reason: str,
                 task_id: str | None, now: datetime) -> tuple[dict[str, Any], Effects]:
    try:
        payload = json.dumps({"args": args, "kwargs": kwargs}, default=repr)
    except (RecursionError, ValueError, TypeError):
        payload = repr({"args": args, "kwargs": kwargs})[:DEAD_LETTER_PAYLOAD_CHARS]
    repo.add_dead_letter(conn, task_name="hitl.request_assistance", task_id=task_id,
                         payload=payload[:DEAD_LETTER_PAYLOAD_CHARS], reason=reason, now=now)
    answer = result(None, "failed", None, False)
    answer["error"] = {"code": "invalid_request", "message": reason, "fields": []}
    return answer, Effects()


def _record_invalid(conn: Connection, kwargs: dict[str, Any], message: str, fields: list[str],
                    now: datetime, defaults: Defaults, problem: Invalid,
                    task_id: str | None = None) -> tuple[dict[str, Any], Effects]:
    execution_id = salvage_execution_id(kwargs)
    if execution_id is None:
        return _dead_letter(conn, (), kwargs, f"no usable execution_id: {message}", task_id, now)
    reply = salvage_reply_to(kwargs, webhooks=defaults.webhooks)
    error = {"code": "invalid_request", "message": message, "fields": fields}
    return _fail(conn, execution_id, kwargs, error, reply, now, defaults,
                 errors=[{"field": e.field, "message": e.message} for e in problem.errors]
                 or [{"field": f, "message": message} for f in fields])


def _fail(conn: Connection, execution_id: str, kwargs: dict[str, Any], error: dict[str, Any],
          reply: ReplyTo | bool | None, now: datetime, defaults: Defaults, *,
          errors: list[dict[str, str]]) -> tuple[dict[str, Any], Effects]:
    """Record a failed execution and queue its ``error`` exit (when a reply target is known)."""
    reply_task, reply_queue, reply_webhook = _reply_target(reply, defaults)
    conversation_id = kwargs.get("conversation_id") if isinstance(
        kwargs.get("conversation_id"), str) else None
    values = {
        "execution_id": execution_id,
        "conversation_id": (conversation_id or "")[:128] or None,
        "flow_id": _short_str(kwargs.get("flow_id")),
        "step_id": _short_str(kwargs.get("step_id")),
        "state": "failed", "exit": "error", "merge_field": {"error": error},
        "reply_task": reply_task, "reply_queue": reply_queue, "reply_webhook": reply_webhook,
        "requested_at": now, "ended_at": now, "errors": errors,
    }
    message = exit_message_for(SimpleNamespace(**values), "error", {"error": error}, now)
    created, ids = dispatching.create_with_messages(
        conn, values, [message] if message else [], now, audits=[
            ("request_invalid", None, {"error": error}),
            ("exit_recorded", None, {"exit": "error", "merge_field": {"error": error},
                                     "reply": bool(reply_task)})])
    if not created:
        return _duplicate(conn, execution_id), Effects()
    effects = Effects()
    effects.observations.append(StepEnded("failed", "error", {"error": error}, None, now))
    _queued(effects, [message] if message else [], ids)
    return result(execution_id, "failed", "error", False), effects


def _short_str(value: Any) -> str | None:
    return value if isinstance(value, str) and 0 < len(value) <= 128 else None


def _reply_target(reply: ReplyTo | bool | None, defaults: Defaults
                  ) -> tuple[str | None, str | None, str | None]:
    """(reply task, reply queue, webhook URL) as stored on the execution."""
    if reply is False:
        return None, None, None  # unreadable reply_to: nowhere safe to answer
    if isinstance(reply, ReplyTo) and reply.webhook is not None:
        return WEBHOOK_REPLY_TASK, None, reply.webhook
    if isinstance(reply, ReplyTo):
        return reply.task, reply.queue, None
    return defaults.reply_task, defaults.reply_queue, None


def _duplicate(conn: Connection, execution_id: str) -> dict[str, Any]:
    row = repo.get_execution(conn, execution_id)
    assert row is not None
    return result(execution_id, row.state, row.exit, True)


def _queued(effects: Effects, messages: list[dict[str, Any]], ids: dict[str, int]) -> None:
    effects.outbox += [OutboxMessage(ids[m["dedupe_key"]], m["kind"], m["execution_id"],
                                     dict(m["payload"]))
                       for m in messages if m["dedupe_key"] in ids]


def _dispatch(conn: Connection, request: AssistanceRequest, now: datetime,
              defaults: Defaults) -> tuple[dict[str, Any], Effects]:
    execution_id = request.execution_id
    settings = request.settings
    # Lock the conversation first: two requests for one conversation queue here, so the
    # "one waiting execution" check below cannot race (the partial unique index backs it up).
    # The same round trip reads the agents who can see the conversation (an index lookup).
    read = dispatching.lock_and_read(
        conn, execution_id=execution_id, conversation_id=request.conversation_id,
        tags=list(request.conversation.tags) if request.conversation is not None else None,
        specific_agent_id=settings.specific_agent_id, now=now)
    if read.mine is not None:
        return result(execution_id, read.mine[0], read.mine[1], True), Effects()  # a retry

    if read.busy_with is not None:
        error: dict[str, Any] = {"code": "conversation_busy",
                 "message": f"conversation {request.conversation_id} already has a waiting "
                            f"execution ({read.busy_with}); cancel it or wait for its exit",
                 "fields": ["conversation_id"]}
        return _fail(conn, execution_id, request.model_dump(mode="json"), error,
                     request.reply_to, now, defaults,
                     errors=[{"field": "conversation_id", "message": error["message"]}])

    tags, contact = list(read.tags), read.contact
    if request.conversation is not None:
        tags, contact = list(request.conversation.tags), request.conversation.contact

    audience = Audience(settings.specific_agent_id, settings.allow_busy, settings.allow_offline)
    selection = select_agents(read.candidates, tags, audience)
    # The audit names the agents that matter — those who can see the conversation but are in
    # a status the step does not allow, and the specific agent — and says of every other
    # agent of the directory that it cannot see the conversation, without listing them all.
    skipped = {agent_id: reason for agent_id, reason in selection.skipped.items()
               if reason != "not_eligible" or agent_id == settings.specific_agent_id}

    reply_task, reply_queue, reply_webhook = _reply_target(request.reply_to, defaults)
    values: dict[str, Any] = {
        "execution_id": execution_id, "conversation_id": request.conversation_id,
        "flow_id": request.flow_id, "step_id": request.step_id,
        "settings": settings.model_dump(mode="json"),
        "reply_task": reply_task, "reply_queue": reply_queue, "reply_webhook": reply_webhook,
        "conversation_prev_status": read.conversation_status,
        "requested_at": now, "dispatched_at": now,
        "request_digest": request_digest(request),
    }
    notified = ("notified", None, {
        "notified": list(selection.notified),
        "skipped": dict(list(skipped.items())[:MAX_SKIPPED_IN_AUDIT]),
        "skipped_total": len(skipped),
        "others": "not_eligible" if settings.specific_agent_id is None else
                  "not_the_specific_agent"})
    effects = Effects(execution=(execution_id, request.conversation_id))

    if selection.not_claimed is not None:
        # Nobody to offer it to: the step exits at once and the conversation keeps its status.
        merge_field = {"reason": selection.not_claimed}
        values.update(state="exited", exit="not_claimed", merge_field=merge_field, ended_at=now)
        message = exit_message_for(SimpleNamespace(**values), "not_claimed", merge_field, now)
        messages = [message] if message else []
        created, ids = dispatching.create_with_messages(
            conn, values, messages, now,
            conversation={"tags": tags, "contact": contact}
            if request.conversation is not None else None,
            audits=[("requested", None, None), notified,
                    ("exit_recorded", None, {"exit": "not_claimed",
                                             "merge_field": merge_field})])
        if not created:
            return _duplicate(conn, execution_id), Effects()
        effects.observations.append(StepEnded("exited", "not_claimed", merge_field, now, now))
        _queued(effects, messages, ids)
        return result(execution_id, "exited", "not_claimed", False), effects

    timeout_at = now + timedelta(seconds=settings.timeout)
    popup = settings.popup
    countdown_at = (now + timedelta(seconds=popup.timer.auto_action_timeout)
                    if popup and popup.timer else None)
    display_until = (now + timedelta(seconds=popup.display_for)
                     if popup and popup.display_for else None)
    values.update(state="waiting", countdown_at=countdown_at, timeout_at=timeout_at)
    offered = list(selection.notified)
    hold = _first_holder(conn, request, tags, audience, offered, now)
    if hold is not None:
        offered = [hold.agent_id]  # §9 sequential: one agent at a time
        notified[2]["notified"] = offered
    event = notifications.requested(
        request, contact=contact, dispatched_at=now, countdown_at=countdown_at,
        display_until=display_until,
        offer=sequence.offer_field(1, hold.due_at) if hold is not None else None)
    # Nobody notified: every agent who could take it is at capacity and the step allows busy
    # agents (§9), so it waits for a slot to free.
    messages = [{"dedupe_key": f"requested:{execution_id}", "kind": "notify",
                 "execution_id": execution_id,
                 "payload": {"agents": offered, "event": dict(event)}}
                ] if offered else []
    horizon = now + timedelta(seconds=defaults.timer_horizon_s)
    deadlines = [("timeout", timeout_at)]
    if countdown_at is not None:
        deadlines.insert(0, ("countdown", countdown_at))
    # Deadlines inside the horizon are marked armed now; if this worker dies before its
    # after-commit publishing, the reconciler fires them when overdue. Only the earliest one
    # gets an ETA wake-up: whichever deadline fires first ends the step and cancels the other,
    # so a wake-up for the later one could only ever find it cancelled.
    timers = [(kind, due, now if due <= horizon else None) for kind, due in deadlines]
    if hold is not None:
        # §9 sequential: the holder's offer timer (one per execution), armed as sequence.arm
        # arms it (its wake-up is published after commit, below).
        timers.append(("offer", hold.due_at, sequence.armed_at(hold.due_at, now)))
    audits: list[repo.AuditEntry] = [
        ("requested", None, {
            "timeout_at": timeout_at.isoformat(),
            "countdown_at": countdown_at.isoformat() if countdown_at else None,
            "display_until": display_until.isoformat() if display_until else None}),
        notified]
    if hold is not None:
        audits.append(("offered", hold.agent_id, {"reason": "at_dispatch", "round": 1,
                                                  "expires_at": hold.due_at.isoformat()}))
    # One statement writes the execution and, only if this inserted it, everything else:
    # outbox, conversation, the offers (or the sequential hold and its holder's idle stamp),
    # the timers, the audit (store/dispatching.py).
    created, ids = dispatching.create_with_messages(
        conn, values, messages, now,
        conversation={"status": "needs_action", "tags": tags, "contact": contact},
        offers=offered if hold is None else (),
        hold=hold.agent_id if hold is not None else None, timers=timers, audits=audits)
    if not created:
        # The same execution_id sent for another conversation at this very moment: the other
        # request locked a different conversation row, so only the primary key stops this one.
        return _duplicate(conn, execution_id), Effects()
    _record_offers(effects, execution_id, offered, timers[-1] if hold is not None else None,
                   now)
    kind, due = min(deadlines, key=lambda deadline: deadline[1])
    if due <= horizon:
        effects.arm.append((execution_id, kind, due))
    _queued(effects, messages, ids)
    return result(execution_id, "waiting", None, False), effects


def _record_offers(effects: Effects, execution_id: str, offered: list[str],
                   offer_timer: tuple[str, datetime, datetime | None] | None,
                   now: datetime) -> None:
    """What the offers made at dispatch add after commit (they are written with the
    execution): a sequential hold's offer-timer wake-up when it is inside the horizon (as
    sequence.arm), the metrics."""
    if offer_timer is not None and offer_timer[2] is not None:
        effects.arm.append((execution_id, "offer", offer_timer[1]))
    if offered:
        effects.observations.append(OffersChanged("made", "at_dispatch", len(offered)))
        effects.observations.append(FirstOffer(now, now))


@dataclass(frozen=True)
class _Hold:
    agent_id: str
    due_at: datetime


def _first_holder(conn: Connection, request: AssistanceRequest, tags: list[str],
                  audience: Audience, able: list[str], now: datetime) -> _Hold | None:
    """A sequential step's first holder among the ``able`` agents, first by its order (§9);
    None for a broadcast step, or when nobody is able (the step waits)."""
    offer = request.settings.offer
    if offer is None or offer.strategy != "sequential" or not able:
        return None
    # Only a sequential step reads the pool's idle stamps and loads (one more statement).
    names = set(able)
    candidates = tuple(c for c in sequential.read_pool(conn, request.conversation_id, tags)
                       if c.agent.agent_id in names)
    chosen = next_holder({}, Sequential(offer.offer_timeout, offer.order, offer.on_missed,
                                        {}, candidates), tags, audience)
    # (The pool and the selection read the same agents under the conversation's lock; should
    # they ever disagree, the first able agent by id holds it rather than everyone.)
    agent_id = chosen[0] if chosen is not None else min(able)
    return _Hold(agent_id, now + timedelta(seconds=offer.offer_timeout))


def record_refused(conn: Connection, top_level: dict[str, Any], fields: list[str], message: str,
                   *, task_id: str | None, now: datetime, defaults: Defaults
                   ) -> tuple[dict[str, Any], Effects]:
    """Record a request the worker refused before its task ran (too deep to process), from the
    readable top level of its kwargs: a failed execution with one ``error`` exit
    (``invalid_request``, ``message``, ``fields``) when ``top_level`` holds a usable
    ``execution_id``, else a dead letter. A redelivered copy finds the execution and answers
    ``duplicate``: never a second exit."""
    return _record_invalid(conn, top_level, message, fields, now, defaults, Invalid(()),
                           task_id=task_id)
