"""One execution's whole record, for operators (``hitl-workers show EXECUTION_ID``).

Read-only: the execution, its conversation, timers, offers, audit trail, agent events and
outbox messages, each row as a plain dict so the caller can print it or dump it as JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from hitl_workers.store import repo
from hitl_workers.store.tables import agent_events, offers, timers


@dataclass(frozen=True)
class Journal:
    execution: dict[str, Any]
    conversation: dict[str, Any] | None
    timers: list[dict[str, Any]]
    """Deadlines, earliest first."""
    offers: list[dict[str, Any]]
    """One per agent notified, by agent id."""
    audit: list[dict[str, Any]]
    """What happened, in the order it was recorded."""
    agent_events: list[dict[str, Any]]
    outbox: list[dict[str, Any]]
    """Exit messages and notifications, in the order they were queued."""


def load(conn: Connection, execution_id: str) -> Journal | None:
    """The journal of ``execution_id``; None when there is no such execution."""
    row = repo.get_execution(conn, execution_id)
    if row is None:
        return None
    conversation = (repo.get_conversation(conn, row.conversation_id)
                    if row.conversation_id else None)

    def rows(query: sa.Select[Any]) -> list[dict[str, Any]]:
        return [dict(r._mapping) for r in conn.execute(query)]

    return Journal(
        execution=dict(row._mapping),
        conversation=dict(conversation._mapping) if conversation else None,
        timers=rows(sa.select(timers).where(timers.c.execution_id == execution_id)
                    .order_by(timers.c.due_at)),
        offers=rows(sa.select(offers).where(offers.c.execution_id == execution_id)
                    .order_by(offers.c.agent_id)),
        audit=[dict(r._mapping) for r in repo.audit_trail(conn, execution_id)],
        agent_events=rows(sa.select(agent_events)
                          .where(agent_events.c.execution_id == execution_id)
                          .order_by(agent_events.c.created_at)),
        outbox=[dict(r._mapping) for r in repo.outbox_for_execution(conn, execution_id)],
    )
