"""Read-only SQL for the gateway: the bell list and the agent's own row.

The bell list applies the very rule claims are judged by
(:func:`hitl_workers.domain.eligibility.refusal`), so an entry it shows is one a claim would
win if nobody else is faster. The SQL only narrows the candidates (waiting, and not reserved
for another specific agent; on PostgreSQL also a tag pre-filter); the rule decides.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection

from hitl_workers.clock import to_ms
from hitl_workers.domain.eligibility import AgentView, Audience, refusal
from hitl_workers.store.tables import agents, conversations, executions, offers

MAX_BELL_ENTRIES = 500


@dataclass(frozen=True)
class AgentRow:
    agent_id: str
    name: str
    status: str
    rule_groups: tuple[tuple[str, ...], ...]

    @property
    def view(self) -> AgentView:
        return AgentView(self.agent_id, self.status, self.rule_groups)


def get_agent(conn: Connection, agent_id: str) -> AgentRow | None:
    row = conn.execute(
        sa.select(agents.c.agent_id, agents.c.name, agents.c.status, agents.c.rule_groups)
        .where(agents.c.agent_id == agent_id)
    ).first()
    if row is None:
        return None
    groups = tuple(tuple(str(tag) for tag in group) for group in row.rule_groups or ())
    return AgentRow(row.agent_id, row.name, row.status, groups)


def agent_exists(conn: Connection, agent_id: str) -> bool:
    """Whether the directory has ``agent_id`` (a removed agent's row is deleted)."""
    found = conn.execute(sa.select(agents.c.agent_id).where(agents.c.agent_id == agent_id))
    return found.first() is not None


def existing_agents(conn: Connection, agent_ids: list[str]) -> set[str]:
    """Those of ``agent_ids`` that are in the directory (one query per 1,000 ids)."""
    found: set[str] = set()
    for start in range(0, len(agent_ids), 1000):
        chunk = agent_ids[start:start + 1000]
        found.update(conn.execute(sa.select(agents.c.agent_id)
                                  .where(agents.c.agent_id.in_(chunk))).scalars())
    return found


def _audience(settings: dict[str, Any] | None) -> Audience:
    settings = settings or {}
    return Audience(specific_agent_id=settings.get("specific_agent_id"),
                    allow_busy=bool(settings.get("allow_busy")),
                    allow_offline=bool(settings.get("allow_offline")))


def _tag_prefilter(conn: Connection, groups: tuple[tuple[str, ...], ...]) -> Any:
    """On PostgreSQL, only conversations whose tags contain one of the agent's groups (a
    JSONB ``@>``, so the database drops most rows). None where it cannot narrow."""
    if conn.dialect.name != "postgresql" or any(not group for group in groups):
        return None
    tags = sa.cast(conversations.c.tags, postgresql.JSONB)
    return sa.or_(*(tags.contains(list(group)) for group in groups))


def claimable(conn: Connection, agent_id: str, limit: int = MAX_BELL_ENTRIES, *,
              routed_only: bool = False, unheld: bool = False) -> list[Any]:
    """The rows (execution, settings, conversation tags and contact) of the waiting executions
    ``agent_id`` may claim now by status and visibility, higher priority first, then the
    oldest. Capacity is left to the claim (and to the offers of services/routing.py).
    ``routed_only``: only steps that gave ``priority`` or ``offer`` (§9).

    A sequential step (§9) only while ``agent_id`` holds it; with ``unheld``, also while
    nobody does (the steps it could be offered: services/routing.py)."""
    agent = get_agent(conn, agent_id)
    if agent is None or not agent.rule_groups:
        return []  # unknown, or sees nothing (§5)
    specific = executions.c.settings["specific_agent_id"].as_string()
    query = (
        sa.select(executions.c.execution_id, executions.c.conversation_id,
                  executions.c.settings, executions.c.requested_at, executions.c.dispatched_at,
                  executions.c.countdown_at, executions.c.timeout_at,
                  conversations.c.tags, conversations.c.contact)
        .select_from(executions.join(
            conversations, conversations.c.conversation_id == executions.c.conversation_id))
        .where(executions.c.state == "waiting",
               sa.or_(specific.is_(None), specific == agent_id))
        # §9: higher priority first (a step without one is 0), then the oldest.
        .order_by(sa.func.coalesce(executions.c.settings["priority"].as_integer(), 0).desc(),
                  sa.func.coalesce(executions.c.dispatched_at, executions.c.requested_at),
                  executions.c.execution_id)
    )
    query = query.where(_sequential_visible(agent_id, unheld=unheld))
    narrowed = _tag_prefilter(conn, agent.rule_groups)
    if narrowed is not None:
        query = query.where(narrowed)
    if routed_only:
        # A plain agent's status change must not read every plain waiting step (§9 follows
        # only routed steps for it): the database drops them.
        query = query.where(sa.or_(executions.c.settings["priority"].as_integer().is_not(None),
                                   executions.c.settings["offer"].as_string().is_not(None)))
    rows: list[Any] = []
    for row in conn.execute(query):
        if refusal(agent.view, row.tags or (), _audience(row.settings)) is not None:
            continue
        rows.append(row)
        if len(rows) >= limit:
            break
    return rows


def _sequential_visible(agent_id: str, *, unheld: bool) -> Any:
    strategy = executions.c.settings["offer"]["strategy"].as_string()
    holding = sa.select(offers.c.agent_id).where(
        offers.c.execution_id == executions.c.execution_id, offers.c.round.is_not(None),
        offers.c.status.in_(["offered", "closed"]))
    visible: Any = holding.where(offers.c.agent_id == agent_id).exists()
    if unheld:
        # Held by another agent: nothing to offer it until that hold passes on.
        visible = sa.or_(visible, ~holding.exists())
    return sa.or_(strategy.is_(None), strategy != "sequential", visible)


def bell_list(conn: Connection, agent_id: str, limit: int = MAX_BELL_ENTRIES
              ) -> list[dict[str, Any]]:
    """The waiting executions ``agent_id`` may claim now, higher priority first, then the
    oldest (docs/contract.md §8, §9)."""
    return [_entry(row) for row in claimable(conn, agent_id, limit)]


def _entry(row: Any) -> dict[str, Any]:
    dispatched_at: datetime = row.dispatched_at or row.requested_at
    return {
        "execution_id": row.execution_id,
        "conversation_id": row.conversation_id,
        "contact": row.contact,
        "dispatched_at": dispatched_at,
        "countdown_until_ms": to_ms(row.countdown_at) if row.countdown_at else None,
        "timeout_at": row.timeout_at,
    }

