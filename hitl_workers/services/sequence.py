"""Writing a sequential decision (§9 "Offer strategy"), inside the transition's transaction.

The machine (domain/machine.py) says who loses the hold and who gets it; this writes the
offers (holder out first, then the next one in: the one-holder index never sees two), the
idle stamp of the new holder, a missed holder's ``on_missed`` status, the ``offer`` timer
(re-armed for the new hold, or done), and queues the notifications: ``assistance.requested``
with its ``offer`` field to the new holder, ``assistance.withdrawn`` (``state: waiting``) to
the one who lost it. Every write needs no answer: on PostgreSQL they travel with the
transition's next statement or ``COMMIT``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.engine import Connection

from hitl_workers.domain import machine
from hitl_workers.domain.request import AssistanceRequest
from hitl_workers.domain.validation import validate_request
from hitl_workers.notify import events as notifications
from hitl_workers.services.effects import Effects, FirstOffer, OffersChanged, OutboxMessage
from hitl_workers.settings import get_settings
from hitl_workers.store import repo, sequential
from hitl_workers.store.executions import LockedExecution

LOST_HOLD = frozenset({"missed", "withdrawn", "rejected"})

_METRIC_CHANGE = {"offered": "made", "missed": "missed", "withdrawn": "withdrawn",
                  "rejected": "withdrawn"}


def write(conn: Connection, row: LockedExecution, view: machine.ExecutionView,
          decision: machine.Decision, now: datetime, effects: Effects) -> None:
    """The sequential part of ``decision`` (see the module docstring)."""
    execution_id = view.execution_id
    for change in decision.offer_changes:
        sequential.set_offer(conn, execution_id, change.agent_id, change.status, change.round,
                             now)
        if change.status == "offered":
            sequential.stamp_offered(conn, change.agent_id, now)
        if change.reason and change.status in _METRIC_CHANGE:
            effects.observations.append(OffersChanged(_METRIC_CHANGE[change.status],
                                                      change.reason))
    if decision.status_change is not None:
        agent_id, status = decision.status_change
        # The holder's row was locked before the execution (store/executions._LOCK_HOLDER).
        sequential.update_agent(conn, agent_id, {"status": status, "updated_at": now})
        # As for any status change: its offers of other steps follow (services/routing.py).
        effects.reassess.append((agent_id, "status_changed"))
    if decision.offer_due is not None:
        arm(conn, effects, execution_id, decision.offer_due, now)
    elif decision.offer_timer_off:
        sequential.offer_timer_done(conn, execution_id, now)
    first = view.sequential is not None and not view.sequential.rounds
    if first and row.dispatched_at is not None and any(
            c.status == "offered" for c in decision.offer_changes):
        effects.observations.append(FirstOffer(row.dispatched_at, now))
    if not decision.ends(view):
        _notify(conn, row, view, decision, now, effects)


def arm(conn: Connection, effects: Effects, execution_id: str, due_at: datetime,
        now: datetime) -> None:
    """The offer timer pending for ``due_at``; a wake-up published after commit when it is
    inside the horizon (else the reconciler arms it when it gets there, as any deadline)."""
    armed = armed_at(due_at, now)
    sequential.arm_offer_timer(conn, execution_id, due_at, armed)
    if armed is not None:
        effects.arm.append((execution_id, "offer", due_at))


def armed_at(due_at: datetime, now: datetime) -> datetime | None:
    """An offer timer's ``armed_at`` (see :func:`arm`): now when it is inside the horizon."""
    return now if due_at <= now + timedelta(seconds=get_settings().timer_horizon_s) else None


def _notify(conn: Connection, row: LockedExecution, view: machine.ExecutionView,
            decision: machine.Decision, now: datetime, effects: Effects) -> None:
    stamp = now.isoformat()
    messages: list[dict[str, Any]] = []
    for change in decision.offer_changes:
        event: dict[str, Any] | None = None
        if change.status in LOST_HOLD and change.reason:
            event = notifications.withdrawn(
                execution_id=view.execution_id, conversation_id=row.conversation_id,
                state="waiting", exit=None, claimed_by=None,
                suffix=f":{change.agent_id}:{stamp}")
        elif change.status == "offered" and decision.offer_due is not None:
            offer = offer_field(change.round or 1, decision.offer_due)
            event = requested_event(conn, row, view, offer=offer)
            if event is not None:
                event["id"] = (f"requested:{view.execution_id}:{change.agent_id}:"
                               f"{change.round}:{stamp}")
        if event is not None:
            messages.append({"dedupe_key": event["id"], "kind": "notify",
                             "execution_id": view.execution_id,
                             "payload": {"agents": [change.agent_id], "event": event}})
    # The holder's withdrawal and the next one's offer: one statement.
    ids = repo.add_outbox_many(conn, messages, now)
    effects.outbox += [OutboxMessage(ids[m["dedupe_key"]], "notify", view.execution_id,
                                     m["payload"]) for m in messages if m["dedupe_key"] in ids]


def offer_field(round_: int, expires_at: datetime) -> dict[str, Any]:
    """The ``offer`` field of a sequential ``assistance.requested`` (§9)."""
    return {"strategy": "sequential", "round": round_, "expires_at": expires_at.isoformat()}


def requested_event(conn: Connection, row: LockedExecution, view: machine.ExecutionView, *,
                    offer: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The ``assistance.requested`` notification of the step, as dispatch built it."""
    request = validate_request({
        "execution_id": row.execution_id, "conversation_id": row.conversation_id,
        "flow_id": row.flow_id, "step_id": row.step_id, "settings": dict(row.settings or {})})
    if not isinstance(request, AssistanceRequest) or row.dispatched_at is None:
        return None  # a stored request always validates again; nothing to offer otherwise
    conversation = repo.get_conversation(conn, row.conversation_id or "")
    popup = request.settings.popup
    countdown = view.timers.get("countdown")
    display_until = (row.dispatched_at + timedelta(seconds=popup.display_for)
                     if popup is not None and popup.display_for else None)
    return notifications.requested(
        request, contact=conversation.contact if conversation else None,
        dispatched_at=row.dispatched_at,
        countdown_at=countdown.due_at if countdown is not None else None,
        display_until=display_until, offer=offer)
