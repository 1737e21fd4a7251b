"""Deleting what is past its retention period, a small batch at a time.

Every statement here touches only rows that no waiting step needs: executions that ended
(``exited``, ``cancelled``, ``failed``) before the cutoff, whose outbox rows have all been
sent, with what hangs off them (offers, timers, audit events, outbox rows); stored answers
to agent events, dead letters and idle conversations older than the cutoff. A batch is one
short transaction, so no lock is held for long and a purge can stop between any two batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from hitl_workers.domain.names import EXECUTION_STATES
from hitl_workers.store.tables import (
    agent_events,
    agents,
    audit_events,
    conversations,
    dead_letters,
    executions,
    offers,
    outbox,
    timers,
)

ENDED_STATES = tuple(state for state in EXECUTION_STATES if state != "waiting")
CHILD_TABLES = (offers, timers, audit_events, outbox)
"""The rows that hang off an execution, deleted with it, before it (timers reference it;
offers name it without a key, revision 0008)."""


@dataclass
class Purged:
    """Rows deleted, by table name."""

    rows: dict[str, int] = field(default_factory=dict)

    def add(self, table: str, count: int) -> None:
        if count:
            self.rows[table] = self.rows.get(table, 0) + count

    def merge(self, other: Purged) -> None:
        for table, count in other.rows.items():
            self.add(table, count)

    @property
    def total(self) -> int:
        return sum(self.rows.values())


def purge_ended_executions(conn: Connection, cutoff: datetime, limit: int) -> Purged:
    """Delete up to ``limit`` executions that ended before ``cutoff``, and their rows.

    An execution whose exit message (or a notification) is still unsent is kept: the outbox
    row is the only copy of a message the flow engine has not received, and the reconciler
    still needs it. It goes with a later batch, once it is sent.
    """
    unsent = sa.exists().where(outbox.c.execution_id == executions.c.execution_id,
                               outbox.c.sent_at.is_(None))
    pick = (sa.select(executions.c.execution_id)
            .where(executions.c.state.in_(ENDED_STATES), executions.c.ended_at < cutoff,
                   ~unsent)
            .order_by(executions.c.ended_at)
            .limit(limit)
            # Two purges (beat's and an operator's) skip each other's batches instead of
            # waiting; the lock also keeps a concurrent reader of the row from seeing it
            # half-deleted. An ended execution is never locked by a transition for long
            # (every transition on it answers "already resolved" and moves on).
            .with_for_update(skip_locked=True))
    ids = list(conn.execute(pick).scalars())
    purged = Purged()
    if not ids:
        return purged
    for table in CHILD_TABLES:
        purged.add(table.name, _delete_where_in(conn, table, table.c.execution_id, ids))
    purged.add(executions.name, _delete_where_in(conn, executions, executions.c.execution_id,
                                                 ids))
    return purged


def purge_agent_answers(conn: Connection, cutoff: datetime, limit: int) -> int:
    """Stored answers to agent events created before ``cutoff`` (a repeat of such an old
    ``event_id`` is then answered as a new event, by an execution that has ended anyway)."""
    return _delete_oldest(conn, agent_events, agent_events.c.created_at, cutoff, limit,
                          key=(agent_events.c.agent_id, agent_events.c.event_id))


def purge_dead_letters(conn: Connection, cutoff: datetime, limit: int) -> int:
    return _delete_oldest(conn, dead_letters, dead_letters.c.received_at, cutoff, limit,
                          key=(dead_letters.c.id,))


def purge_idle_conversations(conn: Connection, cutoff: datetime, limit: int) -> int:
    """Conversations untouched since ``cutoff`` that no execution refers to any more.

    Whatever their status: ``needs_action`` always has a waiting execution (so it is never
    picked), and a ``claimed`` one nobody touched for the whole retention period holds a claim
    older than anything else the system still remembers.
    """
    has_execution = sa.exists().where(
        executions.c.conversation_id == conversations.c.conversation_id)
    pick = (sa.select(conversations.c.conversation_id)
            .where(conversations.c.updated_at < cutoff, ~has_execution)
            .order_by(conversations.c.updated_at)
            .limit(limit)
            # A dispatch for this conversation locks it (it updates its tags and status):
            # skip it rather than wait, and whichever commits second sees the other's work —
            # a dispatch that comes after the delete simply creates the conversation again.
            .with_for_update(skip_locked=True))
    ids = list(conn.execute(pick).scalars())
    if not ids:
        return 0
    return _delete_where_in(conn, conversations, conversations.c.conversation_id, ids)


def existing_agents(conn: Connection, agent_ids: Sequence[str]) -> set[str]:
    """Which of ``agent_ids`` are in the directory."""
    if not agent_ids:
        return set()
    rows = conn.execute(sa.select(agents.c.agent_id).where(agents.c.agent_id.in_(agent_ids)))
    return set(rows.scalars())


def _delete_where_in(conn: Connection, table: sa.Table, column: sa.Column[Any],
                     ids: Sequence[object]) -> int:
    result = conn.execute(sa.delete(table).where(column.in_(ids)))
    return int(result.rowcount or 0)


def _delete_oldest(conn: Connection, table: sa.Table, at: sa.Column[datetime], cutoff: datetime,
                   limit: int, *, key: tuple[sa.Column[object], ...]) -> int:
    # DELETE … LIMIT is not portable: pick the keys first (oldest first, skipping rows another
    # purge holds), then delete exactly those.
    pick = (sa.select(*key).where(at < cutoff).order_by(at).limit(limit)
            .with_for_update(skip_locked=True))
    rows = conn.execute(pick).all()
    if not rows:
        return 0
    if len(key) == 1:
        return _delete_where_in(conn, table, key[0], [row[0] for row in rows])
    result = conn.execute(sa.delete(table).where(sa.tuple_(*key).in_([tuple(r) for r in rows])))
    return int(result.rowcount or 0)
