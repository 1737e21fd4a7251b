"""The outbox rows of webhook exits (docs/contract.md §10): claiming an attempt, recording how
it went.

A webhook exit is an ``exit`` row whose payload is ``{"webhook": true, "kwargs": …}``; the URL
is the execution's ``reply_webhook``. ``next_attempt_at`` says when the row may be tried (NULL:
now): after a failure, the backoff; during an attempt, the attempt's lease.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from hitl_workers.store.tables import executions, outbox


@dataclass(frozen=True)
class Attempt:
    outbox_id: int
    execution_id: str
    url: str | None
    kwargs: dict[str, Any]
    number: int
    """1 for the first attempt."""
    created_at: datetime


def claim_attempt(conn: Connection, outbox_id: int, now: datetime, lease_until: datetime
                  ) -> Attempt | None:
    """Take the row for one attempt, when it is unsent and due; None otherwise.

    The row is locked (``SKIP LOCKED``: a row another deliverer is claiming right now is
    theirs) and its ``next_attempt_at`` set to ``lease_until``, so until then nobody else
    tries it — not a second copy of the delivery task, not the reconciler — while this
    attempt's POST runs outside any transaction. An attempt whose worker dies leaves the
    lease to expire, and the row is due again.
    """
    row = conn.execute(
        sa.select(outbox.c.id, outbox.c.execution_id, outbox.c.payload, outbox.c.attempts,
                  outbox.c.created_at, outbox.c.next_attempt_at,
                  executions.c.reply_webhook)
        .select_from(outbox.outerjoin(
            executions, executions.c.execution_id == outbox.c.execution_id))
        .where(outbox.c.id == outbox_id, outbox.c.sent_at.is_(None), outbox.c.kind == "exit")
        .with_for_update(of=outbox, skip_locked=True)).first()
    if row is None or not isinstance(row.payload, dict) or not row.payload.get("webhook"):
        return None
    if row.next_attempt_at is not None and row.next_attempt_at > now:
        return None  # backing off, or another attempt holds the lease
    conn.execute(sa.update(outbox).where(outbox.c.id == outbox_id).values(
        attempts=outbox.c.attempts + 1, attempted_at=now, next_attempt_at=lease_until))
    return Attempt(row.id, row.execution_id, row.reply_webhook, dict(row.payload["kwargs"]),
                   row.attempts + 1, row.created_at)


def delivered(conn: Connection, outbox_id: int, now: datetime) -> None:
    conn.execute(sa.update(outbox).where(outbox.c.id == outbox_id).values(
        sent_at=now, next_attempt_at=None, last_error=None))


def failed(conn: Connection, outbox_id: int, error: str, retry_at: datetime) -> None:
    conn.execute(sa.update(outbox).where(outbox.c.id == outbox_id).values(
        next_attempt_at=retry_at, last_error=error[:2000]))


def given_up(conn: Connection, outbox_id: int, error: str, now: datetime) -> None:
    """No more attempts. ``sent_at`` is set, as for a superseded row: the row is done, and
    retention may delete it with its execution; ``last_error`` says it was never answered."""
    conn.execute(sa.update(outbox).where(outbox.c.id == outbox_id).values(
        sent_at=now, next_attempt_at=None, last_error=f"gave up: {error}"[:2000]))
