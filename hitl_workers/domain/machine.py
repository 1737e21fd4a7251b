"""The step execution's state machine: ``decide(view, event, now) -> Decision``.

Pure: the caller loads the execution *locked* (so no other worker can change it meanwhile),
asks :func:`decide`, and applies the decision in the same transaction. Every (state, event)
pair has a row in the table below; anything not ``waiting`` is final and answers every agent
event with ``already_resolved`` (or ``already_claimed`` to the winner's repeat).

    state      event            result
    ---------  ---------------  -----------------------------------------------------------
    waiting    claim (may act)  exited claimed            outcome claimed
    waiting    claim (may not)  unchanged                 outcome not_eligible
    waiting    claim (at capacity) unchanged              outcome at_capacity
    waiting    reject, any      exited not_claimed        outcome rejected
    waiting    reject, all      exited when every agent notified at dispatch has rejected
                                (outcome rejected), else recorded (reject_recorded)
    waiting    reject, repeat   unchanged (counts once)   outcome reject_recorded
    waiting    reject (may not) unchanged                 outcome not_eligible
    waiting    close (may act)  offer closed              outcome closed
                                (an open offer only: a reject stays a reject, and an agent
                                never notified gets no offer)
    waiting    close, repeat    unchanged                 outcome closed
    waiting    close (may not)  unchanged                 outcome not_eligible
    waiting    timer due        exited timer_action | timeout   outcome fired
    waiting    timer not due    unchanged (re-arm)        outcome early
    waiting    timer not pending unchanged                outcome stale
    waiting    offer timer, step not sequential   the timer retired   outcome stale
    waiting    cancel           cancelled                 outcome cancelled
    waiting    agent removed    offer withdrawn; under reject_policy=all the step may now
                                be rejected by everyone left (outcome rejected) else withdrawn
    waiting    reassess, routed, agent became able (no offer, or a withdrawn one)
                                offer made                outcome offered
    waiting    reassess, routed, agent became unable (offer open)
                                offer withdrawn, as for agent removed   outcome withdrawn
                                (or rejected under reject_policy=all)
    waiting    reassess, routed, otherwise (still able with an offer; rejected or closed
                                before; unable without an open offer)   outcome stale
    waiting    reassess, not routed   unchanged (§1–§5 as before)     outcome stale

    Sequential steps (``settings.offer.strategy = sequential``, §9; ``view.sequential``; who
    holds and who is next: domain/sequence.py). "Settle" below: when nobody holds, the next
    holder is offered it (next_in_sequence, the offer timer re-armed); else, when some agent
    is able and every able agent has rejected, exited not_claimed REJECTED; else it waits with
    nobody holding (the offer timer done).

    waiting    claim by the holder      as a claim above (claimed, at_capacity)
    waiting    claim, able non-holder   unchanged            outcome not_eligible (not_offered)
    waiting    claim (may not)          unchanged            outcome not_eligible / at_capacity
    waiting    reject by the holder     offer rejected, settle   outcome reject_recorded
                                        (or rejected when everyone able rejected)
    waiting    reject by another who may answer (offered before, or able)
                                        offer rejected (leaves the rotation), settle
                                        outcome reject_recorded (or rejected)
    waiting    reject, repeat           unchanged            outcome reject_recorded
    waiting    reject (may not)         unchanged            outcome not_eligible
    waiting    close by the holder      offer closed, still holds   outcome closed
    waiting    close by the holder, repeat  unchanged        outcome closed
    waiting    close by another         as close above
    waiting    offer timer, due, holder offer missed (on_missed status set unless keep), settle
                                        outcome fired (or rejected)
    waiting    offer timer, due, nobody holds   offer timer done     outcome stale
    waiting    offer timer, not due     unchanged (re-arm)   outcome early
    waiting    offer timer, armed for an earlier hold   unchanged    outcome stale
    waiting    offer timer with the step's countdown/timeout also due
                                        exited timer_action | timeout (the step's own first)
    waiting    countdown / timeout      as timer above (the holder's popup withdrawn)
    waiting    cancel                   as cancel above
    waiting    reassess, became able, nobody holds, not rejected
                                        offered (became_eligible)   outcome offered
    waiting    reassess, became able, someone holds (or it rejected)   outcome stale
    waiting    reassess, holder became unable   offer withdrawn, settle   outcome withdrawn
    waiting    agent removed, the holder        offer withdrawn, settle   outcome withdrawn
    waiting    reassess / removed, not the holder and not able   unchanged   outcome stale
    exited     claim by winner  unchanged                 outcome already_claimed
    final      agent event      unchanged                 outcome already_resolved
    final      timer            unchanged                 outcome stale
    final      cancel           unchanged                 outcome already_resolved
    final      agent removed    unchanged                 outcome stale
    final      reassess         unchanged                 outcome stale

*Routed* (``ExecutionView.follows``): the step gave ``priority`` or ``offer`` (§9), or the
agent has a capacity. A step with neither, and agents without capacity, keep the §1–§5
behaviour: offered once at dispatch, an offer kept whatever its agent's status does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal, cast

from hitl_workers.domain import sequence
from hitl_workers.domain.eligibility import AT_CAPACITY, AgentView, Audience, refusal
from hitl_workers.domain.names import ExecutionState as State
from hitl_workers.domain.names import ExitName, TimerKind
from hitl_workers.domain.sequence import Sequential

RejectPolicy = Literal["any", "all"]

TIMER_EXITS: dict[str, ExitName] = {"countdown": "timer_action", "timeout": "timeout"}
LIVE_OFFERS = frozenset({"offered", "closed", "rejected"})


@dataclass(frozen=True)
class TimerView:
    due_at: datetime
    state: str


@dataclass(frozen=True)
class ExecutionView:
    execution_id: str
    state: State
    exit: ExitName | None = None
    merge_field: Mapping[str, Any] | None = None
    tags: tuple[str, ...] = ()
    audience: Audience = Audience()
    reject_policy: RejectPolicy = "any"
    offers: Mapping[str, str] = field(default_factory=dict)
    """agent id → offer status (offered / closed / rejected / withdrawn)."""
    rejected_by: tuple[str, ...] = ()
    """Agents who rejected, in the order they did."""
    timers: Mapping[str, TimerView] = field(default_factory=dict)
    routed: bool = False
    """The step gave ``priority`` or ``offer`` (§9): its offers follow eligibility."""
    sequential: Sequential | None = None
    """The step's sequential offers and the agents who can see it (None: broadcast)."""

    def follows(self, agent: AgentView | None) -> bool:
        """Whether offers of this step to ``agent`` follow its eligibility (§9)."""
        return self.routed or (agent is not None and agent.capacity is not None)

    @property
    def winner(self) -> str | None:
        if self.exit == "claimed" and self.merge_field:
            winner = self.merge_field.get("addClaimedBy")
            return str(winner) if winner is not None else None
        return None


@dataclass(frozen=True)
class Claim:
    agent_id: str
    agent: AgentView | None


@dataclass(frozen=True)
class Reject:
    agent_id: str
    agent: AgentView | None


@dataclass(frozen=True)
class Close:
    agent_id: str
    agent: AgentView | None


@dataclass(frozen=True)
class TimerFired:
    kind: TimerKind
    due_at: datetime | None = None
    """The deadline the wake-up was armed for (None: unknown, e.g. the reconciler's). An
    ``offer`` wake-up armed for another hold than the current one is stale."""


@dataclass(frozen=True)
class Cancel:
    reason: str = ""


@dataclass(frozen=True)
class AgentRemoved:
    agent_id: str


@dataclass(frozen=True)
class Reassess:
    """The agent's ability to claim may have changed (§9): its status or directory entry
    changed, a slot freed (``hitl.release``) or filled (a claim elsewhere)."""

    agent_id: str
    agent: AgentView | None
    why: str
    """What changed, for the audit of an offer made: status_changed, directory_changed,
    slot_freed."""


Event = Claim | Reject | Close | TimerFired | Cancel | AgentRemoved | Reassess


@dataclass(frozen=True)
class OfferChange:
    """A sequential offer's change (§9): the agent, its new status, the round, and why an
    offer was made or lost (``became_eligible``, ``next_in_sequence``, ``missed``,
    ``rejected``, ``at_capacity``, ``status_not_allowed:<s>``, ``agent_removed``: counted,
    and a holder who lost it is told); ``""`` when no offer was made or lost (the holder
    closing its popup, an agent rejecting before its turn)."""

    agent_id: str
    status: str
    round: int | None
    reason: str


AuditEntry = tuple[str, str | None, Mapping[str, Any]]


@dataclass(frozen=True)
class Decision:
    outcome: str
    state: State
    exit: ExitName | None = None
    merge_field: Mapping[str, Any] | None = None
    offer_change: tuple[str, str] | None = None
    """(agent id, new offer status) to record, if any."""
    audit: str | None = None
    """The audit event kind to append, if any."""
    detail: Mapping[str, Any] = field(default_factory=dict)
    timer: TimerKind | None = None
    """The deadline that fired, when one did (not always the wake-up's own: see _timer)."""
    offer_changes: tuple[OfferChange, ...] = ()
    """Sequential offers: the holder out, the next one in (written in this order)."""
    more_audits: tuple[AuditEntry, ...] = ()
    """Audit entries naming their own agent (kind, agent id, detail), after ``audit``."""
    offer_due: datetime | None = None
    """(Re-)arm the ``offer`` timer for this deadline: a new holder's offer timeout."""
    offer_timer_off: bool = False
    """Nobody holds the step now: the pending ``offer`` timer is done (fired or cancelled)."""
    status_change: tuple[str, str] | None = None
    """(agent id, status): a missed offer's ``on_missed`` status, set in this transaction."""

    def ends(self, view: ExecutionView) -> bool:
        return view.state == "waiting" and self.state != "waiting"


def decide(view: ExecutionView, event: Event, now: datetime) -> Decision:
    """What ``event`` does to the execution ``view`` at time ``now``."""
    if view.state != "waiting":
        return _after_the_end(view, event)
    if view.sequential is not None and not isinstance(event, Cancel):
        return _sequential(view, view.sequential, event, now)
    match event:
        case Claim():
            return _claim(view, event)
        case Reject():
            return _reject(view, event)
        case Close():
            return _close(view, event)
        case TimerFired():
            return _timer(view, event, now)
        case Cancel():
            return Decision("cancelled", "cancelled", audit="cancelled",
                            detail={"reason": event.reason})
        case AgentRemoved():
            return _agent_removed(view, event)
        case Reassess():
            return _reassess(view, event)


def _unchanged(view: ExecutionView, outcome: str, audit: str | None = None,
               **detail: Any) -> Decision:
    return Decision(outcome, view.state, view.exit, view.merge_field, audit=audit, detail=detail)


def _after_the_end(view: ExecutionView, event: Event) -> Decision:
    if isinstance(event, Claim) and view.winner == event.agent_id:
        return _unchanged(view, "already_claimed")
    if isinstance(event, Claim | Reject | Close | Cancel):
        audit = "claim_lost" if isinstance(event, Claim) else None
        return _unchanged(view, "already_resolved", audit)
    return _unchanged(view, "stale")


def _claim(view: ExecutionView, event: Claim) -> Decision:
    reason = refusal(event.agent, view.tags, view.audience)
    if reason == AT_CAPACITY:
        # §9: the capacity check is part of this decision, taken under the agent's lock (see
        # store/executions.py), so two claims for an agent's last slot never both win.
        return _unchanged(view, "at_capacity", "claim_refused", reason=reason)
    if reason is not None:
        return _unchanged(view, "not_eligible", "claim_refused", reason=reason)
    return Decision("claimed", "exited", "claimed", {"addClaimedBy": event.agent_id},
                    audit="claimed")


def _may_answer(view: ExecutionView, agent_id: str, agent: AgentView | None) -> str | None:
    """Reject and close: open to anyone notified at dispatch (their popup is up) and to
    anyone who may claim now. Returns the refusal reason, or None."""
    if agent is not None and view.offers.get(agent_id) in LIVE_OFFERS:
        return None
    reason = refusal(agent, view.tags, view.audience)
    # Declining is not taking: an agent at capacity may still reject or close.
    return None if reason == AT_CAPACITY else reason


def _reject(view: ExecutionView, event: Reject) -> Decision:
    reason = _may_answer(view, event.agent_id, event.agent)
    if reason is not None:
        return _unchanged(view, "not_eligible", "reject_refused", reason=reason)
    repeat = event.agent_id in view.rejected_by
    rejected = view.rejected_by if repeat else (*view.rejected_by, event.agent_id)
    # A repeated reject counts once (§1) and is a declared no-op: writing the offer again would
    # also move the agent's place in ``rejectedBy``, which follows the order of first rejects.
    change = None if repeat else (event.agent_id, "rejected")
    audit = None if repeat else "rejected"
    if view.reject_policy == "any" or _everyone_rejected(view, rejected):
        return Decision("rejected", "exited", "not_claimed",
                        {"reason": "REJECTED", "rejectedBy": list(rejected)},
                        offer_change=change, audit="rejected")
    return Decision("reject_recorded", "waiting", offer_change=change, audit=audit,
                    detail={"waiting_for": _still_to_reject(view, rejected)})


def _still_to_reject(view: ExecutionView, rejected: tuple[str, ...]) -> list[str]:
    return sorted(a for a, status in view.offers.items()
                  if status in LIVE_OFFERS and a not in rejected)


def _everyone_rejected(view: ExecutionView, rejected: tuple[str, ...]) -> bool:
    return bool(rejected) and not _still_to_reject(view, rejected)


def _close(view: ExecutionView, event: Close) -> Decision:
    reason = _may_answer(view, event.agent_id, event.agent)
    if reason is not None:
        return _unchanged(view, "not_eligible", "close_refused", reason=reason)
    current = view.offers.get(event.agent_id)
    if current == "closed":
        return _unchanged(view, "closed")  # a repeat: a declared no-op
    # Only an open offer becomes closed. A close after a reject must not turn the reject back
    # into a mere close; and an agent not notified at dispatch (closing from its bell list) must
    # not get an offer row, or under reject_policy=all it would join those who must reject.
    change = (event.agent_id, "closed") if current == "offered" else None
    return Decision("closed", "waiting", offer_change=change, audit="popup_closed")


def _timer(view: ExecutionView, event: TimerFired, now: datetime) -> Decision:
    timer = view.timers.get(event.kind)
    if timer is None or timer.state != "pending":
        return _unchanged(view, "stale")
    if now < timer.due_at:
        return _unchanged(view, "early")
    # The first deadline to arrive wins, whichever wake-up noticed: when a countdown's
    # wake-up was lost and the timeout's arrives, the countdown (due earlier) still decides.
    # A countdown and a timeout due at the same instant end by the countdown.
    # Only the step's own deadlines end it (an ``offer`` timeout passes the hold, see
    # _offer_missed); when one is due with an offer timeout, the step's own goes first.
    due = [(k, t) for k, t in view.timers.items()
           if k in TIMER_EXITS and t.state == "pending" and t.due_at <= now]
    if not due:
        # An ``offer`` timer on a step that is not sequential: only a sequential dispatch
        # arms one, so the row is wrong (written by hand, or by a bug). Retire it, or every
        # wake-up and every reconciler tick would pick it up again and fail on it.
        return Decision("stale", view.state, view.exit, view.merge_field, offer_timer_off=True)
    kind, timer = min(due, key=lambda pair: (pair[1].due_at, pair[0] != "countdown"))
    audit = "timer_fired" if kind == "countdown" else "timeout_fired"
    lateness_ms = (now - timer.due_at).total_seconds() * 1000
    return Decision("fired", "exited", TIMER_EXITS[kind], {}, audit=audit,
                    detail={"due_at": timer.due_at.isoformat(), "late_ms": round(lateness_ms, 1)},
                    timer=cast(TimerKind, kind))


def _reassess(view: ExecutionView, event: Reassess) -> Decision:
    if not view.follows(event.agent):
        return _unchanged(view, "stale")
    reason = refusal(event.agent, view.tags, view.audience)
    current = view.offers.get(event.agent_id)
    if reason is None:
        # Became able. Not again to an agent who rejected or closed it (§9), nor twice.
        if current is not None and current != "withdrawn":
            return _unchanged(view, "stale")
        return Decision("offered", "waiting", offer_change=(event.agent_id, "offered"),
                        audit="offered", detail={"reason": event.why})
    # Became unable: only an open offer is withdrawn. A reject stands; a closed popup is
    # already gone (and stays closed, so that it is not offered again).
    if current != "offered":
        return _unchanged(view, "stale")
    return _withdraw(view, event.agent_id, reason)


def _agent_removed(view: ExecutionView, event: AgentRemoved) -> Decision:
    if view.offers.get(event.agent_id) not in LIVE_OFFERS:
        return _unchanged(view, "stale")
    return _withdraw(view, event.agent_id, "agent_removed")


def _withdraw(view: ExecutionView, agent_id: str, reason: str) -> Decision:
    # An agent removed, or no longer able to claim (§9), no longer counts among those who
    # must reject (§5).
    remaining = {a: s for a, s in view.offers.items() if a != agent_id}
    rejected = view.rejected_by  # a reject made before the removal still stands
    after = ExecutionView(view.execution_id, view.state, offers=remaining, rejected_by=rejected)
    change = (agent_id, "withdrawn")
    if view.reject_policy == "all" and _everyone_rejected(after, rejected):
        completed = ({"completed_by_removal_of": agent_id} if reason == "agent_removed"
                     else {"completed_by_withdrawal_from": agent_id, "reason": reason})
        return Decision("rejected", "exited", "not_claimed",
                        {"reason": "REJECTED", "rejectedBy": list(rejected)},
                        offer_change=change, audit="rejected", detail=completed)
    return Decision("withdrawn", "waiting", offer_change=change, audit="offer_withdrawn",
                    detail={"reason": reason})


# --- sequential offers (§9 "Offer strategy", domain/sequence.py) ----------------------------


def _sequential(view: ExecutionView, seq: Sequential, event: Event, now: datetime) -> Decision:
    match event:
        case Claim():
            return _seq_claim(view, seq, event)
        case Reject():
            return _seq_reject(view, seq, event, now)
        case Close():
            return _seq_close(view, seq, event)
        case TimerFired():
            return _seq_timer(view, seq, event, now)
        case AgentRemoved():
            if sequence.holder(view.offers, seq) != event.agent_id:
                return _unchanged(view, "stale")
            return _seq_withdraw(view, seq.with_agent(None, event.agent_id), event.agent_id,
                                 "agent_removed", now)
        case Reassess():
            return _seq_reassess(view, seq, event, now)
        case _:  # Cancel: handled by decide
            raise AssertionError(event)


def _seq_claim(view: ExecutionView, seq: Sequential, event: Claim) -> Decision:
    reason = refusal(event.agent, view.tags, view.audience)
    if reason is None and sequence.holder(view.offers, seq) != event.agent_id:
        # Only the holder may claim: the others who could are waiting for their turn.
        return _unchanged(view, "not_eligible", "claim_refused", reason="not_offered")
    return _claim(view, event)


def _seq_reject(view: ExecutionView, seq: Sequential, event: Reject, now: datetime
                ) -> Decision:
    agent_id = event.agent_id
    offered_before = event.agent is not None and agent_id in seq.rounds
    reason = None if offered_before else refusal(event.agent, view.tags, view.audience)
    if reason is not None and reason != AT_CAPACITY:  # declining is not taking
        return _unchanged(view, "not_eligible", "reject_refused", reason=reason)
    if agent_id in view.rejected_by:
        return _unchanged(view, "reject_recorded")  # a repeat counts once: a declared no-op
    held = sequence.holder(view.offers, seq) == agent_id
    # A non-holder's reject takes it out of the rotation; it withdraws no offer (no metric).
    changes = [OfferChange(agent_id, "rejected", seq.rounds.get(agent_id),
                           "rejected" if held else "")]
    audits: list[AuditEntry] = ([("offer_withdrawn", agent_id, {"reason": "rejected"})]
                                if held else [])
    return _settle(view, seq.with_agent(event.agent, agent_id),
                   {**view.offers, agent_id: "rejected"}, (*view.rejected_by, agent_id),
                   changes, audits, now, outcome="reject_recorded", audit="rejected")


def _seq_close(view: ExecutionView, seq: Sequential, event: Close) -> Decision:
    if sequence.holder(view.offers, seq) != event.agent_id:
        return _close(view, event)
    if view.offers[event.agent_id] == "closed":
        return _unchanged(view, "closed")  # a repeat: a declared no-op
    # The holder closed its popup: it still holds the step until its offer timeout.
    change = OfferChange(event.agent_id, "closed", seq.rounds[event.agent_id], "")
    return Decision("closed", "waiting", offer_changes=(change,), audit="popup_closed")


def _seq_timer(view: ExecutionView, seq: Sequential, event: TimerFired, now: datetime
               ) -> Decision:
    timer = view.timers.get(event.kind)
    if event.kind != "offer" or timer is None or timer.state != "pending":
        return _timer(view, event, now)
    if event.due_at is not None and abs((event.due_at - timer.due_at).total_seconds()) > 1e-3:
        # A wake-up armed for an earlier hold: the current one has its own wake-up, so this
        # one must neither fire it early nor re-arm a second.
        return _unchanged(view, "stale")
    if now < timer.due_at:
        return _unchanged(view, "early")
    step_due = [k for k, t in view.timers.items()
                if k in TIMER_EXITS and t.state == "pending" and t.due_at <= now]
    if step_due:  # the step's own deadline first (_timer picks the earliest)
        return _timer(view, TimerFired(cast(TimerKind, step_due[0])), now)
    return _offer_missed(view, seq, now)


def _offer_missed(view: ExecutionView, seq: Sequential, now: datetime) -> Decision:
    missed = sequence.holder(view.offers, seq)
    if missed is None:
        return Decision("stale", "waiting", offer_timer_off=True)  # nobody holds: it is done
    on_missed = seq.on_missed
    changes = [OfferChange(missed, "missed", seq.rounds.get(missed), "missed")]
    audits: list[AuditEntry] = [("offer_missed", missed, {"on_missed": on_missed}),
                                ("offer_withdrawn", missed, {"reason": "missed"})]
    status_change = None
    after = seq
    current = next((c.agent for c in seq.pool if c.agent.agent_id == missed), None)
    if on_missed != "keep" and current is not None:
        if current.status != on_missed:
            status_change = (missed, on_missed)
        # The next holder is chosen with the missed agent in its new status.
        after = seq.with_agent(replace(current, status=on_missed), missed)
    decision = _settle(view, after, {**view.offers, missed: "missed"}, view.rejected_by,
                       changes, audits, now, outcome="fired", audit=None,
                       exit_detail={"completed_by_miss_of": missed})
    return replace(decision, status_change=status_change)


def _seq_reassess(view: ExecutionView, seq: Sequential, event: Reassess, now: datetime
                  ) -> Decision:
    agent_id = event.agent_id
    reason = refusal(event.agent, view.tags, view.audience)
    held_by = sequence.holder(view.offers, seq)
    if reason is None:
        offered_in = sequence.round_for(agent_id, view.offers, seq)
        if held_by is not None or offered_in is None:
            return _unchanged(view, "stale")  # someone holds it (it is a candidate), or rejected
        due = now + timedelta(seconds=seq.offer_timeout_s)
        return Decision(
            "offered", "waiting",
            offer_changes=(OfferChange(agent_id, "offered", offered_in, "became_eligible"),),
            more_audits=(("offered", agent_id, {"reason": "became_eligible",
                                                "round": offered_in,
                                                "expires_at": due.isoformat()}),),
            offer_due=due)
    if held_by != agent_id:
        return _unchanged(view, "stale")
    return _seq_withdraw(view, seq.with_agent(event.agent, agent_id), agent_id, reason, now)


def _seq_withdraw(view: ExecutionView, seq: Sequential, agent_id: str, reason: str,
                  now: datetime) -> Decision:
    """The holder can no longer claim: its offer is withdrawn and the next one gets it."""
    return _settle(view, seq, {**view.offers, agent_id: "withdrawn"}, view.rejected_by,
                   [OfferChange(agent_id, "withdrawn", seq.rounds.get(agent_id), reason)],
                   [("offer_withdrawn", agent_id, {"reason": reason})], now,
                   outcome="withdrawn", audit=None,
                   exit_detail={"completed_by_withdrawal_from": agent_id, "reason": reason})


def _settle(view: ExecutionView, seq: Sequential, offers: Mapping[str, str],
            rejected: tuple[str, ...], changes: list[OfferChange], audits: list[AuditEntry],
            now: datetime, *, outcome: str, audit: str | None,
            exit_detail: Mapping[str, Any] | None = None) -> Decision:
    """After the holder (or another agent) changed: pass the hold on, exit when every able
    agent has rejected, or wait with nobody holding (an agent who becomes able gets it)."""
    pending_offer = (t := view.timers.get("offer")) is not None and t.state == "pending"
    if sequence.holder(offers, seq) is not None:
        return Decision(outcome, "waiting", audit=audit, offer_changes=tuple(changes),
                        more_audits=tuple(audits))
    chosen = sequence.next_holder(offers, seq, view.tags, view.audience)
    if chosen is not None:
        agent_id, offered_in = chosen
        due = now + timedelta(seconds=seq.offer_timeout_s)
        changes.append(OfferChange(agent_id, "offered", offered_in, "next_in_sequence"))
        audits.append(("offered", agent_id, {"reason": "next_in_sequence", "round": offered_in,
                                             "expires_at": due.isoformat()}))
        return Decision(outcome, "waiting", audit=audit, offer_changes=tuple(changes),
                        more_audits=tuple(audits), offer_due=due)
    if sequence.everyone_able_rejected(offers, seq, view.tags, view.audience):
        return Decision("rejected", "exited", "not_claimed",
                        {"reason": "REJECTED", "rejectedBy": list(rejected)},
                        audit="rejected", detail=exit_detail or {},
                        offer_changes=tuple(changes), more_audits=tuple(audits))
    return Decision(outcome, "waiting", audit=audit, offer_changes=tuple(changes),
                    more_audits=tuple(audits), offer_timer_off=pending_offer)
