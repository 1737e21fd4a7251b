"""Publishing outbox messages: exits to the flow engine, notifications to agents' streams.

At least once: a crash between publishing and marking a row sent means the reconciler sends
it again. Flow engines deduplicate exits on ``execution_id``; agent UIs deduplicate
notifications on their ``id``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Protocol

from hitl_workers.services.effects import OutboxMessage
from hitl_workers.store import repo
from hitl_workers.store.db import transaction

log = logging.getLogger(__name__)


class Publisher(Protocol):
    def send_exit(self, *, task: str, queue: str, kwargs: dict[str, Any]) -> None: ...

    def notify(self, agent_ids: Sequence[str], event: dict[str, Any]) -> None: ...


def publish(messages: Sequence[OutboxMessage], publisher: Publisher,
            clock: Callable[[], datetime]) -> tuple[int, int]:
    """Publish ``messages`` and record the result; returns (sent, failed)."""
    if not messages:
        return 0, 0
    sent: list[OutboxMessage] = []
    failed: dict[int, str] = {}
    for message in messages:
        try:
            _publish_one(message, publisher)
            sent.append(message)
        except Exception as exc:  # any broker/Redis failure: the reconciler retries the row
            log.warning("outbox %s (%s, execution %s) not published: %r", message.id,
                        message.kind, message.execution_id, exc)
            failed[message.id] = repr(exc)
    now = clock()
    with transaction() as conn:
        repo.relax_durability(conn)
        repo.mark_outbox_sent(conn, [m.id for m in sent], now)
        for message in sent:
            if message.kind == "exit" and message.execution_id:
                repo.audit(conn, message.execution_id, "exit_delivered", now,
                           detail={"task": message.payload["task"],
                                   "queue": message.payload["queue"]})
        for outbox_id, error in failed.items():
            repo.mark_outbox_failed(conn, [outbox_id], error, now)
    return len(sent), len(failed)


def _publish_one(message: OutboxMessage, publisher: Publisher) -> None:
    payload = message.payload
    if message.kind == "exit":
        publisher.send_exit(task=payload["task"], queue=payload["queue"],
                            kwargs=dict(payload["kwargs"]))
    else:
        publisher.notify(list(payload["agents"]), dict(payload["event"]))


def publish_ids(ids: Sequence[int], publisher: Publisher,
                clock: Callable[[], datetime]) -> tuple[int, int]:
    """Re-send rows by id (the reconciler's path); rows already sent are skipped."""
    with transaction() as conn:
        rows = repo.unsent_outbox(conn, ids)
    messages = [OutboxMessage(r.id, r.kind, r.execution_id, r.payload) for r in rows]
    return publish(messages, publisher, clock)
