"""Every name the step uses on the wire and in the database, declared once.

The ``Literal`` types are for type checking; the tuples beside them (built from the types, so
the two cannot disagree) are for code that needs the values: the CHECK constraints in
``store/tables.py``, the queues in ``celeryconfig.py``, the validation of incoming statuses.
Adding a value here changes the types, the constraints and the routes together (and needs a
migration for the constraints: ``tests/integration/test_schema_drift.py`` says so).
"""

from __future__ import annotations

from typing import Literal, get_args

# --- Queues and the tasks on them (docs/contract.md §3–§5) --------------------------------------

QueueName = Literal["hitl.requests", "hitl.events", "hitl.timers", "hitl.outbox",
                    "hitl.webhooks"]
QUEUE_NAMES: tuple[QueueName, ...] = get_args(QueueName)

TASK_QUEUES: dict[str, QueueName] = {
    "hitl.request_assistance": "hitl.requests",
    "hitl.cancel": "hitl.requests",
    "hitl.upsert_agent": "hitl.requests",
    "hitl.set_agent_status": "hitl.requests",
    "hitl.remove_agent": "hitl.requests",
    "hitl.release": "hitl.requests",
    "hitl.claim": "hitl.events",
    "hitl.reject": "hitl.events",
    "hitl.close": "hitl.events",
    "hitl.fire_timer": "hitl.timers",
    "hitl.reconcile": "hitl.timers",
    "hitl.fire_overdue": "hitl.timers",
    "hitl.deliver_outbox": "hitl.outbox",
    "hitl.deliver_webhook": "hitl.webhooks",
    "hitl.purge": "hitl.timers",
}
"""Each task name → the queue it is routed to."""

# --- Agents and conversations ---------------------------------------------------------------

AgentStatus = Literal["available", "busy", "offline"]
AGENT_STATUSES: tuple[AgentStatus, ...] = get_args(AgentStatus)

ConversationStatus = Literal["open", "needs_action", "claimed"]
CONVERSATION_STATUSES: tuple[ConversationStatus, ...] = get_args(ConversationStatus)

# --- A step execution -----------------------------------------------------------------------

ExecutionState = Literal["waiting", "exited", "cancelled", "failed"]
EXECUTION_STATES: tuple[ExecutionState, ...] = get_args(ExecutionState)

ExitName = Literal["claimed", "not_claimed", "timer_action", "timeout", "error"]
EXITS: tuple[ExitName, ...] = get_args(ExitName)

NotClaimedReason = Literal["NO_AGENTS", "NOT_AVAILABLE", "REJECTED"]
"""``merge_field.reason`` of a ``not_claimed`` exit."""

OfferStatus = Literal["offered", "closed", "rejected", "withdrawn", "missed"]
"""``missed``: a sequential offer whose ``offer_timeout`` passed (§9, revision 0007)."""
OFFER_STATUSES: tuple[OfferStatus, ...] = get_args(OfferStatus)

TimerKind = Literal["countdown", "timeout", "offer"]
"""``offer``: the sequential holder's offer timeout (§9), re-armed at each new hold."""
TIMER_KINDS: tuple[TimerKind, ...] = get_args(TimerKind)

OfferStrategy = Literal["broadcast", "sequential"]
OFFER_STRATEGIES: tuple[OfferStrategy, ...] = get_args(OfferStrategy)

OfferOrder = Literal["longest_idle", "fewest_claimed"]
OnMissed = Literal["keep", "busy", "offline"]

TimerState = Literal["pending", "fired", "cancelled"]
TIMER_STATES: tuple[TimerState, ...] = get_args(TimerState)

OutboxKind = Literal["exit", "notify"]
OUTBOX_KINDS: tuple[OutboxKind, ...] = get_args(OutboxKind)

# --- What an agent event answers (docs/contract.md §3, the gateway's HTTP status in §8) ----------

EventOutcome = Literal["claimed", "already_claimed", "rejected", "reject_recorded", "closed",
                       "already_resolved", "not_eligible", "at_capacity", "not_found",
                       "invalid"]
EVENT_OUTCOMES: tuple[EventOutcome, ...] = get_args(EventOutcome)
