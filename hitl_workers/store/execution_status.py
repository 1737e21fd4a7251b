"""Read-only SQL for the flow engines' HTTP interface (docs/contract.md §10): one execution as it
stands, with its offers, and the request digest that tells a retry from a clash."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from hitl_workers.store.tables import executions, offers


@dataclass(frozen=True)
class Offer:
    agent_id: str
    status: str


@dataclass(frozen=True)
class ExecutionStatus:
    execution_id: str
    conversation_id: str | None
    state: str
    exit: str | None
    merge_field: dict[str, Any] | None
    dispatched_at: datetime | None
    ended_at: datetime | None
    request_digest: str | None
    offers: list[Offer] = field(default_factory=list)

    @property
    def error_code(self) -> str | None:
        """The ``error`` exit's code (``invalid_request``, ``conversation_busy``), if any."""
        error = (self.merge_field or {}).get("error") if self.exit == "error" else None
        code = error.get("code") if isinstance(error, dict) else None
        return code if isinstance(code, str) else None


def get_status(conn: Connection, execution_id: str, *, with_offers: bool = True
               ) -> ExecutionStatus | None:
    """The execution ``execution_id`` and its offers (by agent id); None when unknown."""
    row = conn.execute(
        sa.select(executions.c.execution_id, executions.c.conversation_id, executions.c.state,
                  executions.c.exit, executions.c.merge_field, executions.c.dispatched_at,
                  executions.c.ended_at, executions.c.request_digest)
        .where(executions.c.execution_id == execution_id)
    ).first()
    if row is None:
        return None
    found: list[Offer] = []
    if with_offers:
        found = [Offer(o.agent_id, o.status) for o in conn.execute(
            sa.select(offers.c.agent_id, offers.c.status)
            .where(offers.c.execution_id == execution_id)
            .order_by(offers.c.agent_id))]
    return ExecutionStatus(row.execution_id, row.conversation_id, row.state, row.exit,
                           row.merge_field, row.dispatched_at, row.ended_at,
                           row.request_digest, found)
