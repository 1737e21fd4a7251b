"""Queueing messages in the outbox, in the caller's transaction."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection

from hitl_workers.services.effects import Effects, OutboxMessage
from hitl_workers.store import repo


def queue(conn: Connection, effects: Effects, *, key: str, kind: str, execution_id: str | None,
          payload: Mapping[str, Any], now: datetime) -> None:
    """Write the message; publish it after commit. A key already queued is not queued again."""
    outbox_id = repo.add_outbox(conn, dedupe_key=key, kind=kind, execution_id=execution_id,
                                payload=payload, now=now)
    if outbox_id is not None:
        effects.outbox.append(OutboxMessage(outbox_id, kind, execution_id, dict(payload)))


def notify(conn: Connection, effects: Effects, *, key: str, execution_id: str,
           agents: list[str], event: Mapping[str, Any], now: datetime) -> None:
    queue(conn, effects, key=key, kind="notify", execution_id=execution_id,
          payload={"agents": agents, "event": dict(event)}, now=now)
