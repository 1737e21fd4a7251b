"""An agent's own load against its capacity (docs/contract.md §9), for the agent itself.

Load is the number of conversations whose ``claimed_by`` holds the agent: the same count a
claim is judged by (store/executions.py ``LOAD_SQL``), here without leaving the conversation
being decided on out, since nothing is being decided. Read-only; the gateway's ``GET /me``
shows it so the console can say "2 / 3 conversations".
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection

from hitl_workers.store.tables import agents, conversations


@dataclass(frozen=True)
class AgentLoad:
    agent_id: str
    capacity: int | None
    """None: unlimited."""
    load: int


def agent_load(conn: Connection, agent_id: str) -> AgentLoad | None:
    """``agent_id``'s capacity and load, or None when the directory does not have it."""
    held = (sa.select(sa.func.count()).select_from(conversations)
            .where(_holds(conn, agent_id)).scalar_subquery())
    found = conn.execute(sa.select(agents.c.capacity, held)
                         .where(agents.c.agent_id == agent_id)).first()
    if found is None:
        return None
    return AgentLoad(agent_id, found[0], int(found[1]))


def _holds(conn: Connection, agent_id: str) -> sa.ColumnElement[bool]:
    """Whether a conversation's ``claimed_by`` holds ``agent_id``."""
    if conn.dialect.name == "postgresql":
        # ``@>`` on the JSONB array: the GIN index on claimed_by answers it, however many
        # conversations there are (the same predicate as a claim's load check).
        claimed_by = sa.type_coerce(conversations.c.claimed_by, postgresql.JSONB)
        return claimed_by.contains([agent_id])
    # SQLite: JSON1's json_each, row by row (its small directories, as store/repo.loads).
    each = sa.func.json_each(conversations.c.claimed_by).table_valued("value")
    return sa.exists(sa.select(sa.literal(1)).select_from(each).where(each.c.value == agent_id))
