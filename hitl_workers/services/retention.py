"""Retention: what ended more than ``HITL_RETENTION_DAYS`` ago is deleted (docs/operations.md).

Run by beat (``hitl.purge``, a bounded amount of work per tick) and by operators
(``hitl-workers purge --older-than 7d``, until nothing is left). Each batch is one short
transaction (:mod:`hitl_workers.store.retention`); nothing a waiting step needs is touched.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy.engine import Connection

from hitl_workers.store import retention as store
from hitl_workers.store.db import transaction

BATCH = 500
"""Rows per transaction: each batch holds its locks for a few milliseconds."""


class AgentStreams(Protocol):
    def agent_ids(self) -> list[str]: ...
    def delete(self, agent_ids: Sequence[str]) -> int: ...
    def trim_before(self, agent_ids: Sequence[str], cutoff_ms: int) -> int: ...


@dataclass(frozen=True)
class Policy:
    keep_for: timedelta
    """Rows that ended (or were written) longer ago than this are deleted."""
    budget_s: float | None = None
    """Stop starting new batches after this long (None: until nothing is left)."""
    batch: int = BATCH


def purge(clock: Callable[[], datetime], policy: Policy,
          streams: AgentStreams | None = None) -> store.Purged:
    """Delete everything past ``policy.keep_for``, batch by batch, within the budget."""
    now = clock()
    cutoff = now - policy.keep_for
    deadline = None if policy.budget_s is None else time.monotonic() + policy.budget_s
    purged = store.Purged()
    steps: list[tuple[str, Callable[[Connection], int]]] = [
        ("agent_events", lambda c: store.purge_agent_answers(c, cutoff, policy.batch)),
        ("dead_letters", lambda c: store.purge_dead_letters(c, cutoff, policy.batch)),
        # Executions before conversations: a conversation goes once no execution refers to it.
        ("executions", lambda c: _executions(c, cutoff, policy.batch, purged)),
        ("conversations", lambda c: store.purge_idle_conversations(c, cutoff, policy.batch)),
    ]
    for table, step in steps:
        while deadline is None or time.monotonic() < deadline:
            with transaction() as conn:
                count = step(conn)
            if table != "executions":
                purged.add(table, count)
            if count < policy.batch:
                break
    if streams is not None:
        _streams(streams, int(cutoff.timestamp() * 1000), purged)
    return purged


def _executions(conn: Connection, cutoff: datetime, batch: int, purged: store.Purged) -> int:
    done = store.purge_ended_executions(conn, cutoff, batch)
    purged.merge(done)
    return done.rows.get("executions", 0)


def _streams(streams: AgentStreams, cutoff_ms: int, purged: store.Purged) -> None:
    with_streams = streams.agent_ids()
    known: set[str] = set()
    for start in range(0, len(with_streams), BATCH):
        chunk = with_streams[start:start + BATCH]
        with transaction() as conn:
            known |= store.existing_agents(conn, chunk)
    removed = [a for a in with_streams if a not in known]
    # A notification the outbox still owes a removed agent (its withdrawal) may recreate its
    # stream after this; the next pass deletes it again. Nobody can read it: a removed
    # agent's token is refused.
    purged.add("streams_deleted", streams.delete(removed))
    purged.add("stream_entries", streams.trim_before(sorted(known), cutoff_ms))
