"""Publishing outbox messages: exits to the flow engine, notifications to agents' streams.

At least once: a crash between publishing and marking a row sent means the reconciler sends
it again. Flow engines deduplicate exits on ``execution_id``; agent UIs deduplicate
notifications on their ``id``.

Exits go first: they are what the flow engine waits for, and they travel over the broker,
not over the notification Redis. When the notification Redis fails (down, or hanging until
the client's socket timeout, ``HITL_NOTIFY_TIMEOUT_S``), :data:`notifications` opens, for
every process of the worker at once: in that time publishing right after a transaction (a
claim's, a wake-up's) skips notifications and leaves their rows unsent, so a dead Redis
costs one socket timeout per worker, not one per message, per claim or per pool process.
When the pause is over, a quick probe (a PING with a short timeout) decides whether to try
again. The reconciler re-sends the skipped rows through ``hitl.deliver_outbox``, which
probes even while the breaker is open, and stops at the first failure.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from multiprocessing.sharedctypes import RawArray
from typing import Any, Literal, Protocol

from hitl_workers.services.effects import OutboxMessage
from hitl_workers.store import repo, wire
from hitl_workers.store.db import get_engine, transaction

log = logging.getLogger(__name__)


class Publisher(Protocol):
    def send_exit(self, *, task: str, queue: str, kwargs: dict[str, Any]) -> None: ...

    def notify(self, agent_ids: Sequence[str], event: dict[str, Any]) -> None: ...

    def hand_off_webhook(self, outbox_id: int) -> None: ...


class Breaker:
    """Remembers that a channel failed recently; while open, publishing that may skip the
    channel does. The pause doubles while failures go on (up to ``max_pause_s``) and ends
    with the first success; when it is over the breaker is half-open: the next caller
    probes the channel cheaply before using it.

    The state lives in shared memory created at import, so the pool processes a worker
    forks share it: one process meeting a dead Redis spares the others the same timeout.
    """

    def __init__(self, pause_s: float = 2.0, max_pause_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.pause_s = pause_s
        self.max_pause_s = max_pause_s
        self.clock = clock  # CLOCK_MONOTONIC is one clock for every process on the host
        self._state = RawArray("d", [0.0, pause_s])  # open until, next pause

    def state(self) -> Literal["closed", "open", "half-open"]:
        open_until = self._state[0]
        if not open_until:
            return "closed"
        return "open" if self.clock() < open_until else "half-open"

    def failed(self) -> None:
        pause = self._state[1]
        self._state[0] = self.clock() + pause
        self._state[1] = min(pause * 2, self.max_pause_s)

    def succeeded(self) -> None:
        self._state[0] = 0.0
        self._state[1] = self.pause_s


notifications = Breaker()
"""The notification Redis's breaker (shared by a worker's processes)."""


class SentMarks:
    """Outbox rows this process published, waiting to be marked sent — without a transaction
    of their own per task (docs/architecture.md).

    On PostgreSQL the marks ride with the next transaction this process runs anyway (one
    statement for all of them, sent with its ``BEGIN``: :func:`hitl_workers.store.wire.
    add_rider`); a process with nothing else to do flushes them itself after
    ``flush_after_s``, in one small transaction for however many there are. A transaction
    that took them and rolled back gives them back, and they are then written on their own
    (so marks that could themselves fail never ride with a transition again; if that fails
    too they are dropped and the reconciler re-sends those rows). A process whose
    transactions keep carrying its marks never flushes on its own: the flusher writes only
    marks that waited ``flush_after_s`` for a transaction. Until a row is marked, the
    reconciler leaves it alone for ``HITL_OUTBOX_RETRY_AFTER_S`` (seconds, not this fraction
    of one), so an identical re-send still happens only when the process died in between.

    On SQLite (no folding) :meth:`batching` is False and rows are marked as before, in a
    transaction right after publishing.
    """

    def __init__(self, flush_after_s: float = 0.2) -> None:
        self.flush_after_s = flush_after_s
        self._marks: list[dict[str, Any]] = []
        self._taken: dict[int, list[dict[str, Any]]] = {}  # by thread: what a transaction took
        self._alone: list[dict[str, Any]] = []  # given back by a rollback: written on their own
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._pid: int | None = None
        self._registered = False
        self._oldest: float | None = None  # when the oldest pending mark was added

    def batching(self) -> bool:
        return wire.folds(get_engine())

    def add(self, messages: Sequence[OutboxMessage], now: datetime) -> None:
        at = now.isoformat()
        with self._lock:
            if not self._marks:
                self._oldest = time.monotonic()
            self._marks.extend(_mark(m, at) for m in messages)
            self._start()
        self._wake.set()

    def pending(self) -> int:
        return len(self._marks)

    def take(self) -> tuple[str, dict[str, Any]] | None:
        """The rider: one statement for every pending mark (None when there is none)."""
        with self._lock:
            if not self._marks:
                return None
            taken, self._marks = self._marks, []
            self._oldest = None
            self._taken[threading.get_ident()] = taken
        return repo.mark_sent_statement(taken)

    def confirm(self, committed: bool) -> None:
        with self._lock:
            taken = self._taken.pop(threading.get_ident(), [])
            if not committed and taken:
                self._alone += taken
        if not committed and taken:
            self._wake.set()

    def flush(self) -> None:
        """Mark everything pending now (a process about to stop, or idle)."""
        with self._lock:
            alone, self._alone = self._alone, []
        if alone:
            try:
                with transaction() as conn:
                    conn.exec_driver_sql(*repo.mark_sent_statement(alone))
            except Exception as exc:  # the reconciler re-sends what stays unmarked
                log.warning("outbox: %d sent marks not written: %r", len(alone), exc)
        if not self._marks:
            return
        try:
            with transaction() as conn:
                repo.relax_durability(conn)  # the marks ride with its BEGIN
        except Exception as exc:  # given back; written on their own next time
            log.warning("outbox: %d sent marks not written yet: %r", len(self._marks), exc)

    def _start(self) -> None:
        # Called with the lock held. A forked pool process starts its own flusher.
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        if not self._registered:
            wire.add_rider(self)
            self._registered = True
        threading.Thread(target=self._flusher, name="hitl-sent-marks", daemon=True).start()

    def _flusher(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            time.sleep(self.flush_after_s)
            while (wait := self._wait_s()) > 0:
                # A busy process: its transactions took the marks that woke this, and the
                # pending ones are younger. They will most likely ride with the next
                # transaction too; a transaction of their own now would be one too many.
                time.sleep(wait)
            self.flush()

    def _wait_s(self) -> float:
        """How much longer the pending marks may wait for a transaction to carry them (0:
        flush now). Marks given back by a rollback never wait."""
        with self._lock:
            if self._alone or self._oldest is None:
                return 0.0
            return self._oldest + self.flush_after_s - time.monotonic()


def _mark(message: OutboxMessage, at: str) -> dict[str, Any]:
    mark: dict[str, Any] = {"id": message.id, "at": at, "execution_id": message.execution_id}
    if message.kind == "exit" and message.execution_id:
        mark.update(task=message.payload["task"], queue=message.payload["queue"])
    return mark


sent_marks = SentMarks()
"""This process's pending "sent" marks."""


def publish(messages: Sequence[OutboxMessage], publisher: Publisher,
            clock: Callable[[], datetime], *, probe: bool = False) -> tuple[int, int]:
    """Publish ``messages`` and record the result; returns (sent, failed).

    Notifications are skipped (left unsent, not counted) while :data:`notifications` is
    open, unless ``probe``; when it is half-open (or open, with ``probe``) a quick probe of
    the channel decides. After one notification fails, the rest of this call's are skipped
    too. Skipped and failed rows are re-sent by the reconciler.
    """
    if not messages:
        return 0, 0
    messages = _hand_off_webhooks(messages, publisher)
    sent: list[OutboxMessage] = []
    failed: dict[int, str] = {}
    marked: list[OutboxMessage] = []
    skip_notify = any(m.kind != "exit" for m in messages) and not _may_notify(publisher,
                                                                             probe)
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
    if sent and sent_marks.batching():
        sent_marks.add(sent, now)
        marked, sent = sent, []
    if sent or failed:
        _record_now(sent, failed, now)
    return len(sent) + len(marked), len(failed)


def is_webhook(message: OutboxMessage) -> bool:
    return message.kind == "exit" and bool(message.payload.get("webhook"))


def _hand_off_webhooks(messages: Sequence[OutboxMessage], publisher: Publisher
                       ) -> list[OutboxMessage]:
    """Hand webhook exits to the ``hitl.webhooks`` pool (services/webhooks.py marks them);
    the rest, to publish here. A hand-off that fails loses nothing: the row stays unsent and
    the reconciler hands it off again."""
    rest = []
    for message in messages:
        if not is_webhook(message):
            rest.append(message)
            continue
        try:
            publisher.hand_off_webhook(message.id)
        except Exception as exc:
            log.warning("webhook exit %s (execution %s) not handed off: %r", message.id,
                        message.execution_id, exc)
    return rest


def _record_now(sent: Sequence[OutboxMessage], failed: dict[int, str], now: datetime) -> None:
    """Mark ``sent`` rows sent (auditing exits delivered) and ``failed`` rows failed, in a
    transaction of their own (the path when sent marks are not batched, and for failures)."""
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


def _may_notify(publisher: Publisher, probe: bool) -> bool:
    state = notifications.state()
    if state == "closed":
        return True
    if state == "open" and not probe:
        return False
    quick_probe = getattr(publisher, "probe", None)
    if quick_probe is None or quick_probe():
        return True
    notifications.failed()
    return False


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
