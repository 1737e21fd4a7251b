"""The schema, as SQLAlchemy Core tables.

The database holds the invariants that no race may break:

* one exit per execution — ``executions.exit`` is set once by a guarded update, and the exit
  message row in ``outbox`` has a unique ``dedupe_key`` (``exit:<execution_id>``);
* one waiting execution per conversation — a partial unique index;
* one answer per client event — ``agent_events`` is keyed by ``(agent_id, event_id)``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from hitl_workers.domain.names import (
    AGENT_STATUSES,
    CONVERSATION_STATUSES,
    EXECUTION_STATES,
    EXITS,
    OFFER_STATUSES,
    OUTBOX_KINDS,
    TIMER_KINDS,
    TIMER_STATES,
)

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out — also on SQLite, which drops the zone."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use hitl_workers.clock.utcnow()")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        moment: datetime = value  # the DateTime impl has already parsed it
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
AsSentJSON = sa.JSON().with_variant(postgresql.JSON(), "postgresql")
"""JSON kept as written, key order included (``jsonb`` reorders keys): for what is shown or
answered back exactly as it came in."""
TagArray = sa.ARRAY(sa.String(128)).with_variant(sa.JSON(), "sqlite")

ID_LEN = 128
MAX_CAPACITY = 1000


def one_of(column: str, values: tuple[str, ...]) -> str:
    """A CHECK constraint's text: ``column IN ('a', 'b')``, from a name list in domain/names."""
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


agents = sa.Table(
    "agents",
    metadata,
    sa.Column("agent_id", sa.String(ID_LEN), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False, server_default=""),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("rule_groups", JSONType, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    # How many conversations it may hold claimed at once; NULL: unlimited (§9, revision 0005).
    sa.Column("capacity", sa.Integer, nullable=True),
    # When it was last offered a sequential step / last claimed one: the ``longest_idle``
    # order of sequential offers (§9, revision 0007). NULL: never.
    sa.Column("last_offered_at", UTCDateTime, nullable=True),
    sa.Column("last_claimed_at", UTCDateTime, nullable=True),
    sa.CheckConstraint(one_of("status", AGENT_STATUSES), name="status"),
    sa.CheckConstraint(f"capacity IS NULL OR (capacity >= 1 AND capacity <= {MAX_CAPACITY})",
                       name="capacity"),
)

agent_rule_groups = sa.Table(
    "agent_rule_groups",
    metadata,
    # ``agents.rule_groups`` one row per group, for the index: "who can see a conversation
    # tagged T" is ``tags <@ T`` (every tag of the group among T), answered by the GIN index
    # whatever the size of the directory. Written with the agent (services/agents.py).
    sa.Column("agent_id", sa.String(ID_LEN),
              sa.ForeignKey("agents.agent_id", ondelete="CASCADE"), primary_key=True),
    sa.Column("position", sa.Integer, primary_key=True),
    sa.Column("tags", TagArray, nullable=False),
    # The group's tag that the fewest groups had when it was written ("" for an empty group):
    # a group whose tags are all among T has its key tag among T, so dispatch looks groups up
    # by key tag (btree) and re-checks ``tags <@ T``; a rare key keeps that lookup small.
    sa.Column("key_tag", sa.String(ID_LEN), nullable=False, server_default=""),
)
sa.Index("ix_agent_rule_groups_key_tag", agent_rule_groups.c.key_tag)
# GIN on the tags: counts "groups with tag t" (``tags @> {t}``) when choosing a key tag.
sa.Index("ix_agent_rule_groups_tags", agent_rule_groups.c.tags,
         postgresql_using="gin").ddl_if(dialect="postgresql")

conversations = sa.Table(
    "conversations",
    metadata,
    sa.Column("conversation_id", sa.String(ID_LEN), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False, server_default="open"),
    sa.Column("tags", JSONType, nullable=False),
    sa.Column("contact", AsSentJSON, nullable=True),
    sa.Column("claimed_by", JSONType, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.CheckConstraint(one_of("status", CONVERSATION_STATUSES), name="status"),
)
# An agent's load (§9) is ``count(*) WHERE claimed_by @> '["<agent>"]'``: GIN answers it.
sa.Index("ix_conversations_claimed_by", conversations.c.claimed_by,
         postgresql_using="gin").ddl_if(dialect="postgresql")
# Retention finds idle conversations (store/retention.py).
sa.Index("ix_conversations_updated_at", conversations.c.updated_at)

executions = sa.Table(
    "executions",
    metadata,
    sa.Column("execution_id", sa.String(ID_LEN), primary_key=True),
    sa.Column("conversation_id", sa.String(ID_LEN), nullable=True),
    sa.Column("flow_id", sa.String(ID_LEN), nullable=True),
    sa.Column("step_id", sa.String(ID_LEN), nullable=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("exit", sa.String(16), nullable=True),
    sa.Column("merge_field", JSONType, nullable=True),
    sa.Column("settings", JSONType, nullable=True),
    sa.Column("reply_task", sa.String(200), nullable=True),
    sa.Column("reply_queue", sa.String(200), nullable=True),
    # A webhook exit's URL (docs/contract.md §10); reply_task is then "(webhook)".
    sa.Column("reply_webhook", sa.String(2000), nullable=True),
    sa.Column("conversation_prev_status", sa.String(16), nullable=True),
    sa.Column("requested_at", UTCDateTime, nullable=False),
    sa.Column("dispatched_at", UTCDateTime, nullable=True),
    sa.Column("countdown_at", UTCDateTime, nullable=True),
    sa.Column("timeout_at", UTCDateTime, nullable=True),
    sa.Column("ended_at", UTCDateTime, nullable=True),
    sa.Column("errors", JSONType, nullable=True),
    # sha256 of the validated request (domain/digest.py): over HTTP, a repeated execution_id
    # with the same digest is a retry (200), with another one a clash (409). NULL for failed
    # requests and for executions recorded before revision 0003.
    sa.Column("request_digest", sa.String(64), nullable=True),
    sa.CheckConstraint(one_of("state", EXECUTION_STATES), name="state"),
    sa.CheckConstraint(f"exit IS NULL OR {one_of('exit', EXITS)}", name="exit"),
    # An exit exists exactly when the execution left by one (``failed`` leaves by ``error``).
    sa.CheckConstraint(
        "(state IN ('exited', 'failed')) = (exit IS NOT NULL)", name="exit_iff_ended"
    ),
)
sa.Index(
    "ux_executions_one_waiting_per_conversation",
    executions.c.conversation_id,
    unique=True,
    postgresql_where=executions.c.state == "waiting",
    sqlite_where=executions.c.state == "waiting",
)
sa.Index("ix_executions_state_conversation", executions.c.state, executions.c.conversation_id)
# Retention finds the oldest ended executions (store/retention.py).
sa.Index("ix_executions_ended_at", executions.c.ended_at,
         postgresql_where=executions.c.ended_at.is_not(None),
         sqlite_where=executions.c.ended_at.is_not(None))

offers = sa.Table(
    "offers",
    metadata,
    # The agents notified at dispatch; under reject_policy=all, those who must reject.
    # No foreign key to executions (revision 0008): its per-row check was most of a 1,000-agent
    # fan-out's insert. An offer is written only with its execution (dispatch's one statement)
    # or under that execution's row lock, and retention deletes the two together.
    sa.Column("execution_id", sa.String(ID_LEN), primary_key=True),
    sa.Column("agent_id", sa.String(ID_LEN), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False, server_default="offered"),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    # The round of a sequential offer (§9, revision 0007); NULL for a broadcast offer.
    sa.Column("round", sa.Integer, nullable=True),
    sa.CheckConstraint(
        one_of("status", OFFER_STATUSES), name="status"
    ),
)
sa.Index("ix_offers_agent", offers.c.agent_id)
# At most one agent holds a step's sequential offer (§9): a constraint, so that no race
# between a reject, an offer timeout and a status change can ever leave two holders.
_HOLDING = sa.and_(offers.c.round.is_not(None), offers.c.status.in_(["offered", "closed"]))
sa.Index("ux_offers_one_holder", offers.c.execution_id, unique=True,
         postgresql_where=_HOLDING, sqlite_where=_HOLDING)

timers = sa.Table(
    "timers",
    metadata,
    # A deadline is a row; an ETA task is only a wake-up for it.
    sa.Column("execution_id", sa.String(ID_LEN), sa.ForeignKey("executions.execution_id"),
              primary_key=True),
    sa.Column("kind", sa.String(16), primary_key=True),
    sa.Column("due_at", UTCDateTime, nullable=False),
    sa.Column("state", sa.String(16), nullable=False, server_default="pending"),
    sa.Column("armed_at", UTCDateTime, nullable=True),
    sa.Column("fired_at", UTCDateTime, nullable=True),
    sa.CheckConstraint(one_of("kind", TIMER_KINDS), name="kind"),
    sa.CheckConstraint(one_of("state", TIMER_STATES), name="state"),
)
sa.Index(
    "ix_timers_pending_due",
    timers.c.due_at,
    postgresql_where=timers.c.state == "pending",
    sqlite_where=timers.c.state == "pending",
)

agent_events = sa.Table(
    "agent_events",
    metadata,
    # One row per client event id: a repeat answers the stored result verbatim.
    sa.Column("agent_id", sa.String(ID_LEN), primary_key=True),
    sa.Column("event_id", sa.String(ID_LEN), primary_key=True),
    sa.Column("action", sa.String(16), nullable=False),
    sa.Column("execution_id", sa.String(ID_LEN), nullable=True),
    sa.Column("result", AsSentJSON, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    # Set when the event named its target by conversation: a repeat must name the same one.
    sa.Column("conversation_id", sa.String(ID_LEN), nullable=True),
)

audit_events = sa.Table(
    "audit_events",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True,
              autoincrement=True),
    sa.Column("execution_id", sa.String(ID_LEN), nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("agent_id", sa.String(ID_LEN), nullable=True),
    sa.Column("detail", JSONType, nullable=True),
)
sa.Index("ix_agent_events_created_at", agent_events.c.created_at)

sa.Index("ix_audit_events_execution", audit_events.c.execution_id, audit_events.c.id)

outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True,
              autoincrement=True),
    sa.Column("dedupe_key", sa.String(300), nullable=False, unique=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("execution_id", sa.String(ID_LEN), nullable=True),
    sa.Column("payload", AsSentJSON, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("attempted_at", UTCDateTime, nullable=True),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("sent_at", UTCDateTime, nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    # Webhook exits: not tried again before this (backoff, or an attempt's lease); NULL: now.
    sa.Column("next_attempt_at", UTCDateTime, nullable=True),
    sa.CheckConstraint(one_of("kind", OUTBOX_KINDS), name="kind"),
)
sa.Index(
    "ix_outbox_unsent",
    outbox.c.created_at,
    postgresql_where=outbox.c.sent_at.is_(None),
    sqlite_where=outbox.c.sent_at.is_(None),
)

sa.Index("ix_outbox_execution", outbox.c.execution_id)

dead_letters = sa.Table(
    "dead_letters",
    metadata,
    # Requests that could not even be tied to an execution: kept, never dropped.
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True,
              autoincrement=True),
    sa.Column("received_at", UTCDateTime, nullable=False),
    sa.Column("task_name", sa.String(200), nullable=False),
    sa.Column("task_id", sa.String(200), nullable=True),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
)

sa.Index("ix_dead_letters_received_at", dead_letters.c.received_at)

heartbeats = sa.Table(
    "heartbeats",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("beat_at", UTCDateTime, nullable=False),
    sa.Column("detail", JSONType, nullable=True),
)
