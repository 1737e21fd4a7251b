"""``hitl-workers status``: the operator's first command when something looks wrong.

It reads the database (:mod:`hitl_workers.store.overview`), asks the broker for its queue
lengths and the workers which queues they consume, then says what is wrong and what to do.
:func:`problems` is the verdict: pure, so its thresholds are unit-tested.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from kombu.exceptions import ChannelError

from hitl_workers.clock import utcnow
from hitl_workers.domain.names import QueueName
from hitl_workers.ops.processes import ALL_QUEUES
from hitl_workers.settings import Settings
from hitl_workers.store import overview
from hitl_workers.store.db import read_only

LATE_GRACE_S = 5.0
"""A deadline may be this much past one reconcile interval before it counts as late."""
OUTBOX_GRACE_S = 30.0
"""An unsent outbox row older than the re-send delay plus this is stuck."""


def heartbeat_stale_after_s(reconcile_interval_s: float) -> float:
    return max(15.0, 10 * reconcile_interval_s)


@dataclass
class QueueDepth:
    name: str
    messages: int | None = None
    consumers: int | None = None
    """As the broker counts them (RabbitMQ); a Redis broker does not know them."""
    error: str | None = None


@dataclass
class Problem:
    what: str
    do: str


@dataclass
class Status:
    at: datetime
    reconcile_interval_s: float
    outbox_retry_after_s: float
    database: str
    broker: str
    overview: overview.Overview | None = None
    database_error: str | None = None
    queues: list[QueueDepth] = field(default_factory=list)
    reserved: int | None = None
    """Messages workers hold unacknowledged (armed ETA wake-ups, mostly): Redis only."""
    broker_error: str | None = None
    workers: dict[str, list[str]] | None = None
    """Each online worker node and the queues it consumes; None when nobody answered."""

    @property
    def late_after_s(self) -> float:
        return self.reconcile_interval_s + LATE_GRACE_S


# --- gathering --------------------------------------------------------------------------------

def gather(app: Any, settings: Settings, *, timeout_s: float = 1.5) -> Status:
    status = Status(at=utcnow(), reconcile_interval_s=settings.reconcile_interval_s,
                    outbox_retry_after_s=settings.outbox_retry_after_s,
                    database=_safe_url(settings.database_url),
                    broker=_safe_url(settings.broker_url))
    try:
        with read_only() as conn:
            status.overview = overview.load(conn, status.at, late_after_s=status.late_after_s)
    except Exception as exc:
        status.database_error = _short(exc)
    try:
        _broker(app, status, timeout_s)
    except Exception as exc:
        status.broker_error = _short(exc)
        return status
    try:
        replies = app.control.inspect(timeout=timeout_s).active_queues() or {}
    except Exception as exc:
        status.broker_error = _short(exc)
        return status
    status.workers = {node: sorted(q.get("name", "?") for q in queues or [])
                      for node, queues in sorted(replies.items())}
    return status


def _broker(app: Any, status: Status, timeout_s: float) -> None:
    with app.connection_for_read() as conn:
        conn.ensure_connection(max_retries=1, interval_start=0.2, timeout=timeout_s)
        for name in ALL_QUEUES:
            depth = QueueDepth(name)
            with conn.channel() as channel:
                try:
                    _, depth.messages, consumers = channel.queue_declare(name, passive=True)
                    if conn.transport.driver_type != "redis":
                        depth.consumers = consumers
                except ChannelError:
                    if conn.transport.driver_type == "redis":
                        depth.messages = 0  # an empty list is no key at all
                    else:
                        depth.error = "no such queue (no worker ever declared it)"
            status.queues.append(depth)
        if conn.transport.driver_type == "redis":
            channel = conn.default_channel
            status.reserved = int(channel.client.hlen(channel.unacked_key))


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]


def _short(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]


# --- the verdict ------------------------------------------------------------------------------

WORKER_HINT = ("start one (`celery -A hitl_workers.app worker -Q hitl.requests,hitl.events,"
               "hitl.timers,hitl.outbox,hitl.webhooks`, or the Procfile's pools)")
BEAT_HINT = ("make sure exactly one `celery -A hitl_workers.app beat` runs and a worker consumes "
             "hitl.timers; if both run, a long hitl.timers queue is delaying the reconciler")


def problems(status: Status) -> list[Problem]:
    """What is wrong, each with what to do about it; empty when all is well."""
    found: list[Problem] = []
    if status.database_error:
        found.append(Problem(f"the database does not answer ({status.database_error})",
                             f"check HITL_DATABASE_URL ({status.database}) and that the "
                             "database is up; run `hitl-workers db upgrade` if the schema is "
                             "missing"))
    if status.broker_error:
        found.append(Problem(f"the broker does not answer ({status.broker_error})",
                             f"check HITL_BROKER_URL ({status.broker}) and that the broker "
                             "is up; workers reconnect by themselves once it is back"))
    elif not status.workers:
        found.append(Problem("no worker answered", WORKER_HINT))
    else:
        consumed = {q for queues in status.workers.values() for q in queues}
        for queue in ALL_QUEUES:
            if queue not in consumed:
                found.append(Problem(f"no worker consumes {queue}: {_WHAT_WAITS[queue]}",
                                     f"start a worker with `-Q {queue}`"))
    ov = status.overview
    if ov is None:
        return found
    stale_after = heartbeat_stale_after_s(status.reconcile_interval_s)
    beat_age = ov.age_s(ov.heartbeat_at)
    if beat_age is None:
        found.append(Problem("the reconciler has never run", BEAT_HINT))
    elif beat_age > stale_after:
        found.append(Problem(
            f"the reconciler's last tick was {_dur(beat_age)} ago (it runs every "
            f"{_dur(status.reconcile_interval_s)}; stale after {_dur(stale_after)})", BEAT_HINT))
    if ov.timers_late:
        oldest = ov.age_s(ov.oldest_overdue_due_at) or 0.0
        found.append(Problem(
            f"{ov.timers_late} deadline(s) more than {_dur(status.late_after_s)} overdue "
            f"(the oldest for {_dur(oldest)}): steps are waiting past their timeout",
            "nothing is firing them: " + BEAT_HINT))
    unsent_age = ov.age_s(ov.oldest_unsent_at)
    if unsent_age is not None and unsent_age > status.outbox_retry_after_s + OUTBOX_GRACE_S:
        error = f"; last error: {ov.oldest_unsent_error}" if ov.oldest_unsent_error else ""
        found.append(Problem(
            f"{sum(ov.outbox_unsent.values())} outbox message(s) unsent, the oldest for "
            f"{_dur(unsent_age)}{error}",
            "exits go to the broker and notifications to HITL_REDIS_URL: check both; the "
            "reconciler re-sends them once publishing works (workers on hitl.outbox); a "
            "webhook exit is retried on its backoff until its receiver answers 2xx "
            "(`hitl-workers show ID` lists its attempts)"))
    return found


_WHAT_WAITS: dict[QueueName, str] = {  # one line per queue of domain/names.py
    "hitl.requests": "new requests and cancels wait",
    "hitl.events": "agents' claims, rejects and closes wait",
    "hitl.timers": "wake-ups and the reconciler wait (deadlines fire late)",
    "hitl.outbox": "re-sent exits and notifications wait",
    "hitl.webhooks": "webhook exits wait (docs/contract.md §10)",
}


# --- output -----------------------------------------------------------------------------------

def _dur(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f}s"
    seconds = round(seconds)
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


def to_text(status: Status, found: list[Problem]) -> str:
    ov = status.overview
    lines = [f"hitl_workers status at {status.at:%Y-%m-%d %H:%M:%S} UTC",
             f"  database {status.database}", f"  broker   {status.broker}", ""]
    if ov is not None:
        oldest = (f", oldest {_dur(ov.age_s(ov.oldest_waiting_since) or 0)} "
                  f"({ov.oldest_waiting_id})" if ov.waiting else "")
        lines.append(f"executions    {ov.waiting} waiting{oldest}")
        pending = sum(ov.timers_pending.values())
        by_kind = ", ".join(f"{k} {n}" for k, n in sorted(ov.timers_pending.items()))
        lines.append(f"timers        {pending} pending{f' ({by_kind})' if by_kind else ''}, "
                     f"{ov.timers_overdue} overdue, {ov.timers_late} late "
                     f"(> {_dur(status.late_after_s)})")
        unsent = sum(ov.outbox_unsent.values())
        age = ov.age_s(ov.oldest_unsent_at)
        lines.append(f"outbox        {unsent} unsent" + (
            f", oldest {_dur(age)}, {ov.outbox_failing} failing" if age is not None else ""))
        if ov.webhooks_backing_off:
            ahead = ((ov.next_webhook_attempt_at - ov.at).total_seconds()
                     if ov.next_webhook_attempt_at else 0.0)
            error = f"; last error: {ov.webhook_error}" if ov.webhook_error else ""
            lines.append(f"webhooks      {ov.webhooks_backing_off} exit(s) backing off, next "
                         f"attempt in {_dur(max(0.0, ahead))}{error}")
        beat = ov.age_s(ov.heartbeat_at)
        lines.append("reconciler    " + ("never ran" if beat is None else
                                         f"last tick {_dur(beat)} ago (every "
                                         f"{_dur(status.reconcile_interval_s)})"))
        lines.append(f"dead letters  {ov.dead_letters}" + (
            f", latest {ov.last_dead_letter_at:%Y-%m-%d %H:%M:%S}"
            if ov.last_dead_letter_at else ""))
    if status.queues:
        cells = []
        for q in status.queues:
            value = q.error or str(q.messages)
            if q.consumers is not None:
                value += f" ({q.consumers} consumer{'' if q.consumers == 1 else 's'})"
            cells.append(f"{q.name} {value}")
        lines.append("queues        " + " · ".join(cells))
        if status.reserved is not None:
            lines.append(f"              {status.reserved} held by workers "
                         "(armed wake-ups and tasks being run)")
    if status.workers is not None:
        lines.append(f"workers       {len(status.workers)} online")
        lines.extend(f"                {node}: {', '.join(queues) or '(no queues)'}"
                     for node, queues in status.workers.items())
    lines.append("")
    if not found:
        lines.append("OK")
    else:
        lines.append(f"{len(found)} PROBLEM(S)")
        for problem in found:
            lines.append(f"  - {problem.what}")
            lines.append(f"    do: {problem.do}")
    return "\n".join(lines)


def to_json(status: Status, found: list[Problem]) -> str:
    body: dict[str, Any] = {
        "ok": not found,
        "problems": [asdict(p) for p in found],
        "at": status.at.isoformat(),
        "database": {"url": status.database, "error": status.database_error},
        "broker": {"url": status.broker, "error": status.broker_error,
                   "queues": {q.name: {"messages": q.messages, "consumers": q.consumers,
                                       "error": q.error} for q in status.queues},
                   "reserved": status.reserved},
        "workers": status.workers,
    }
    ov = status.overview
    if ov is not None:
        body.update({
            "executions": {"waiting": ov.waiting, "oldest_waiting_id": ov.oldest_waiting_id,
                           "oldest_waiting_s": ov.age_s(ov.oldest_waiting_since)},
            "timers": {"pending": ov.timers_pending, "overdue": ov.timers_overdue,
                       "late": ov.timers_late, "late_after_s": status.late_after_s,
                       "oldest_overdue_s": ov.age_s(ov.oldest_overdue_due_at)},
            "outbox": {"unsent": ov.outbox_unsent, "failing": ov.outbox_failing,
                       "oldest_unsent_s": ov.age_s(ov.oldest_unsent_at),
                       "oldest_error": ov.oldest_unsent_error},
            "webhooks_backing_off": {
                "count": ov.webhooks_backing_off,
                "next_attempt_at": (ov.next_webhook_attempt_at.isoformat()
                                    if ov.next_webhook_attempt_at else None),
                "last_error": ov.webhook_error},
            "reconciler": {"heartbeat_age_s": ov.age_s(ov.heartbeat_at),
                           "stale_after_s": heartbeat_stale_after_s(
                               status.reconcile_interval_s),
                           "interval_s": status.reconcile_interval_s,
                           "last_tick": ov.heartbeat_detail},
            "dead_letters": {"count": ov.dead_letters,
                             "latest_at": ov.last_dead_letter_at.isoformat()
                             if ov.last_dead_letter_at else None},
        })
    return json.dumps(body, indent=2, default=str)
