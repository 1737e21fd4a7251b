"""Publishing outbox messages: exits to the flow engine, notifications to agents' streams.

At least once: a crash between publishing and marking a row sent means the reconciler sends
it again. Flow engines deduplicate exits on ``execution_id``; agent UIs deduplicate
notifications on their ``id``.

Exits go first: they are what the flow engine waits for, and they travel over the broker,
not over the notification Redis. When the notification Redis fails (down, or hanging until
the client's socket timeout), :data:`notifications` opens for a while: in that time the
publishing done right after a transaction (a claim's, a wake-up's) skips notifications and
leaves their rows unsent, so a dead Redis costs a claim one timeout at most, not one per
message or per claim. The reconciler re-sends those rows through ``hitl.deliver_outbox``,
which always tries (it is the probe) and stops at the first failure.
"""

from __future__ import annotations

import logging
import time
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


class Breaker:
    """Remembers, per process, that a channel failed recently: while open, callers that
    may skip (publishing right after a transaction) leave the channel alone. The pause
    doubles while failures go on (up to ``max_pause_s``) and ends with the first success."""

    def __init__(self, pause_s: float = 2.0, max_pause_s: float = 30.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.pause_s = pause_s
        self.max_pause_s = max_pause_s
        self.monotonic = monotonic
        self._open_until = 0.0
        self._next_pause_s = pause_s

    @property
    def open(self) -> bool:
        return self.monotonic() < self._open_until

    def failed(self) -> None:
        self._open_until = self.monotonic() + self._next_pause_s
        self._next_pause_s = min(self._next_pause_s * 2, self.max_pause_s)

    def succeeded(self) -> None:
        self._open_until = 0.0
        self._next_pause_s = self.pause_s


notifications = Breaker()
"""The notification Redis's breaker (per process)."""


def publish(messages: Sequence[OutboxMessage], publisher: Publisher,
            clock: Callable[[], datetime], *, probe: bool = False) -> tuple[int, int]:
    """Publish ``messages`` and record the result; returns (sent, failed).

    Notifications are skipped (left unsent, not counted) while :data:`notifications` is
    open, unless ``probe``; after one fails, the rest of this call's notifications are
    skipped too. Skipped and failed rows are re-sent by the reconciler.
    """
    if not messages:
        return 0, 0
    sent: list[OutboxMessage] = []
    failed: dict[int, str] = {}
    skip_notify = notifications.open and not probe
    for message in sorted(messages, key=lambda m: m.kind != "exit"):
        if message.kind != "exit" and skip_notify:
            continue
        try:
            _publish_one(message, publisher)
            sent.append(message)
            if message.kind != "exit":
                notifications.succeeded()
        except Exception as exc:  # any broker/Redis failure: the reconciler retries the row
            log.warning("outbox %s (%s, execution %s) not published: %r", message.id,
                        message.kind, message.execution_id, exc)
            failed[message.id] = repr(exc)
            if message.kind != "exit":
                notifications.failed()
                skip_notify = True
    if not sent and not failed:
        return 0, 0
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
    """Re-send rows by id (the reconciler's path); rows already sent are skipped.

    A request notification whose execution ended while it waited is not sent any more: it
    would reach agents after (or instead of) its withdrawal and show a popup for a step that
    is gone. It is marked done; the withdrawal goes out on its own.
    """
    with transaction() as conn:
        rows = repo.unsent_outbox(conn, ids)
        requests = {r.id: r.execution_id for r in rows if _is_request(r)}
        ended = repo.ended_executions(conn, set(requests.values()))
        superseded = [i for i, execution_id in requests.items() if execution_id in ended]
        repo.mark_outbox_superseded(conn, superseded, clock())
    messages = [OutboxMessage(r.id, r.kind, r.execution_id, r.payload) for r in rows
                if r.id not in superseded]
    return publish(messages, publisher, clock, probe=True)


def _is_request(row: Any) -> bool:
    event = row.payload.get("event") if row.kind == "notify" else None
    return isinstance(event, dict) and event.get("type") == "assistance.requested"
