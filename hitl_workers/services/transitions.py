"""Applying a :class:`Decision` inside the transaction that holds the execution's lock.

A transition writes in one statement. One that ends the execution writes everything in
:func:`repo.end_with_messages` (the guarded end, its outbox rows, the offer change, its timers,
the conversation, the winner's idle stamp, the audit and an agent event's stored answer), the
one statement whose answer it needs (the outbox ids); one that does not writes its offer
change, audit and stored answer with
:func:`repo.write_changes`, which needs no answer and on PostgreSQL travels with ``COMMIT``
(:mod:`hitl_workers.store.wire`). So a transition's writes cost one round trip, plus the
commit. A sequential decision's own writes (:mod:`hitl_workers.services.sequence`: the hold
passing, the offer timer, a missed holder's status) stay statements of their own, sent in the
same message before it: they may touch the very offer and timer rows the one write touches,
and PostgreSQL keeps only one of two changes to a row in one statement.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection

from hitl_workers.domain.machine import LIVE_OFFERS, Decision, ExecutionView
from hitl_workers.domain.webhooks import WEBHOOK_REPLY_TASK
from hitl_workers.errors import HitlError
from hitl_workers.notify import events as notifications
from hitl_workers.services import sequence
from hitl_workers.services.effects import Effects, OutboxMessage, StepEnded, TimerFired
from hitl_workers.store import repo
from hitl_workers.store.executions import LockedExecution

AuditEntry = repo.AuditEntry


class InvariantBroken(HitlError):
    """A guarded update lost although its caller held the row lock: this is a bug."""


def apply(conn: Connection, row: LockedExecution, view: ExecutionView, decision: Decision,
          now: datetime, *, agent_id: str | None = None, fired: str | None = None,
          answer: repo.StoredAnswer | None = None) -> Effects:
    """Write ``decision`` for the locked execution ``row``; return what to do after commit.

    ``answer``: an agent event's answer to store with the transition's write (its
    ``event_id`` answers it again verbatim, services/agent_events.py)."""
    effects = Effects(execution=(view.execution_id, row.conversation_id))
    audits: list[AuditEntry] = []
    offer = decision.offer_change
    if offer is not None and decision.offer_changes:
        # The sequential writes below may change the same offer row: this one goes first, in
        # a statement of its own, as it always did (module docstring).
        repo.set_offer(conn, view.execution_id, offer[0], offer[1], now)
        offer = None
    if decision.audit is not None:
        audits.append((decision.audit, agent_id, decision.detail))
    # Sequential offers (§9): the holder out, the next one in, the offer timer, notices.
    sequence.write(conn, row, view, decision, now, effects)
    audits.extend(decision.more_audits)
    if decision.outcome == "early" and fired is not None:
        effects.arm.append((view.execution_id, fired, view.timers[fired].due_at))
    if decision.ends(view):
        _end(conn, row, view, decision, now, effects, audits, offer=offer,
             fired=decision.timer or fired, answer=answer)
    else:
        repo.write_changes(conn, view.execution_id, now, offer=offer, audits=audits,
                           answer=answer)
    return effects


def _end(conn: Connection, row: LockedExecution, view: ExecutionView, decision: Decision,
         now: datetime, effects: Effects, audits: list[AuditEntry], *,
         offer: tuple[str, str] | None, fired: str | None,
         answer: repo.StoredAnswer | None) -> None:
    execution_id = view.execution_id
    effects.observations.append(StepEnded(decision.state, decision.exit, decision.merge_field,
                                          row.dispatched_at, now))
    if fired is not None and (timer := view.timers.get(fired)) is not None:
        effects.observations.append(TimerFired(fired, timer.due_at, now))
    pending = sorted((t.due_at, kind) for kind, t in view.timers.items()
                     if t.state == "pending" and kind != fired and kind != "offer")
    # (Its timers are finished by the one write below: ``fired`` fired, the others cancelled.)
    if pending and fired is None:
        # Only the earliest deadline ever gets a wake-up (see dispatch), so only it can be
        # revoked; a step ended by a deadline had no other wake-up out. Revoking is an
        # optimisation: a wake-up that escapes it finds its timer cancelled and does nothing.
        effects.revoke.append((execution_id, pending[0][1]))
    if (offer_timer := view.timers.get("offer")) is not None \
            and offer_timer.state == "pending" and fired != "offer":
        effects.revoke.append((execution_id, "offer"))  # the holder's wake-up, likewise

    winner = (decision.merge_field or {}).get("addClaimedBy") if decision.exit else None

    # Everyone notified at dispatch, and the winner, learn that the request is gone.
    offers = dict(view.offers)
    if decision.offer_change is not None:
        offers[decision.offer_change[0]] = decision.offer_change[1]
    lost_hold = set()
    for change in decision.offer_changes:
        offers[change.agent_id] = change.status
        if change.reason and change.status in sequence.LOST_HOLD:
            lost_hold.add(change.agent_id)  # a sequential holder who just lost it is told too
    recipients = sorted(a for a, status in offers.items()
                        if status in LIVE_OFFERS or a in lost_hold)
    if winner and winner not in recipients:
        recipients.append(winner)
    messages: list[dict[str, Any]] = []
    if recipients:
        event = notifications.withdrawn(
            execution_id=execution_id, conversation_id=row.conversation_id,
            state=decision.state, exit=decision.exit, claimed_by=winner)
        messages.append({"dedupe_key": f"withdrawn:{execution_id}", "kind": "notify",
                         "execution_id": execution_id,
                         "payload": {"agents": recipients, "event": event}})
    if decision.exit is not None:
        audits.append(("exit_recorded", None,
                       {"exit": decision.exit, "merge_field": decision.merge_field}))
        exit_message = exit_message_for(row, decision.exit, decision.merge_field or {}, now)
        if exit_message is not None:
            messages.append(exit_message)
    ended, ids = repo.end_with_messages(
        conn, execution_id, state=decision.state, exit=decision.exit,
        merge_field=decision.merge_field, now=now, messages=messages, offer=offer,
        fired=fired, conversation=_conversation_after(row, winner),
        claimer=winner or None, audits=audits, answer=answer)
    if not ended:
        raise InvariantBroken(f"execution {execution_id} was not waiting under its own lock")
    effects.outbox += [OutboxMessage(ids[m["dedupe_key"]], m["kind"], m["execution_id"],
                                     dict(m["payload"]))
                       for m in messages if m["dedupe_key"] in ids]


def _conversation_after(row: LockedExecution, winner: str | None
                        ) -> tuple[str, str, tuple[str, ...]] | None:
    """What the step's end writes to its conversation (None: it has none): claimed by the
    winner (added to ``claimed_by`` as it stands when written, repo.add_claimer; §9
    ``longest_idle`` stamps the winner too), or back to the status it had before the step.
    (conversation id, status, ``claimed_by`` as read), for repo.end_with_messages."""
    if row.conversation_id is None or row.conversation_status is None:
        return None
    status = "claimed" if winner else row.conversation_prev_status or "open"
    return row.conversation_id, status, row.claimed_by


def exit_message_for(row: Any, exit: str, merge_field: Mapping[str, Any], now: datetime
                     ) -> dict[str, Any] | None:
    """The exit message for the flow engine, as an outbox entry (None: nowhere to send it).

    ``row`` is anything with the execution's columns as attributes. Its key
    ``exit:<execution_id>`` is unique in the outbox: one exit message per execution. A step
    that answers to a webhook (§10) gets ``{"webhook": true, "kwargs": …}``: the URL is read
    from the execution when the row is delivered (services/webhooks.py).
    """
    target: dict[str, Any]
    if row.reply_task == WEBHOOK_REPLY_TASK:
        target = {"webhook": True}
    elif row.reply_task and row.reply_queue:
        target = {"task": row.reply_task, "queue": row.reply_queue}
    else:
        return None
    payload = {
        **target,
        "kwargs": {
            "execution_id": row.execution_id,
            "conversation_id": row.conversation_id,
            "flow_id": row.flow_id,
            "step_id": row.step_id,
            "exit": exit,
            "merge_field": dict(merge_field),
            "exited_at": now.isoformat(),
        },
    }
    return {"dedupe_key": f"exit:{row.execution_id}", "kind": "exit",
            "execution_id": row.execution_id, "payload": payload}


def queue_exit_message(conn: Connection, effects: Effects, row: Any, exit: str,
                       merge_field: Mapping[str, Any], now: datetime) -> None:
    """Queue the exit message for the flow engine (at most one per execution, by key)."""
    message = exit_message_for(row, exit, merge_field, now)
    if message is not None:
        ids = repo.add_outbox_many(conn, [message], now)
        if message["dedupe_key"] in ids:
            effects.outbox.append(OutboxMessage(ids[message["dedupe_key"]], "exit",
                                                message["execution_id"],
                                                dict(message["payload"])))
