"""Delivering a webhook exit (docs/contract.md §10): one attempt per call, from the outbox.

An attempt is three steps, and the POST is in none of the transactions: a slow receiver holds
no lock and no database connection, and never delays a transition.

1. Claim (short transaction): the row, when unsent and due, gets a lease
   (:data:`LEASE_S`) and its attempt is audited (``webhook_attempt``) — so an attempt cut
   short by a crash is in the audit trail too.
2. POST the exit message's keyword arguments, signed, within :data:`TIMEOUT_S`.
3. Record (short transaction): a 2xx marks the row sent (``webhook_answered``,
   ``exit_delivered``); anything else sets ``next_attempt_at`` by the backoff
   (``webhook_failed``), or, past the give-up time, ends the row (``webhook_gave_up``).

Who calls it: the publisher right after the transition committed (a task on
``hitl.webhooks``), and the reconciler for rows whose ``next_attempt_at`` passed (a retry,
or an attempt whose worker died and whose lease ran out).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from hitl_workers.domain import webhooks as webhook
from hitl_workers.store import repo
from hitl_workers.store import webhooks as rows
from hitl_workers.store.db import transaction

log = logging.getLogger(__name__)

TIMEOUT_S = webhook.TIMEOUT_S
LEASE_S = 3 * TIMEOUT_S
"""How long a claimed attempt keeps others off the row: its POST ends within ``TIMEOUT_S``
(connecting, then reading), so a row still leased after this lost its worker."""


@dataclass(frozen=True)
class Answer:
    """How a POST went: the HTTP status, or the error that stopped it (a timeout, a refused
    connection, …)."""

    status: int | None
    error: str | None
    elapsed_ms: int

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    def describe(self) -> str:
        return f"HTTP {self.status}" if self.status is not None else str(self.error)


Post = Callable[[str, bytes, dict[str, str]], Answer]
"""``post(url, body, headers)``: one HTTP POST within ``TIMEOUT_S``; never raises."""


@dataclass(frozen=True)
class Config:
    secret: str | None
    retry_base_s: float
    retry_max_s: float
    give_up_s: float


Outcome = str
"""``delivered``, ``failed`` (to be retried), ``gave_up``, or ``not_due`` (sent already, backing
off, or another attempt holds it)."""


def deliver(outbox_id: int, post: Post, clock: Callable[[], datetime], config: Config,
            count: Callable[[str], None] = lambda outcome: None) -> Outcome:
    """One attempt at the webhook exit in outbox row ``outbox_id``; ``count`` is told each
    attempt's outcome (for the metrics) once it is recorded."""
    now = clock()
    with transaction() as conn:
        attempt = rows.claim_attempt(conn, outbox_id, now, now + timedelta(seconds=LEASE_S))
        if attempt is None:
            return "not_due"
        give_up_at = attempt.created_at + timedelta(seconds=config.give_up_s)
        if now >= give_up_at or not attempt.url:
            why = ("no webhook URL is recorded for the execution" if not attempt.url else
                   f"not delivered within {config.give_up_s:g} s of the exit")
            rows.given_up(conn, outbox_id, why, now)
            repo.audit(conn, attempt.execution_id, "webhook_gave_up", now,
                       detail={"url": attempt.url, "attempts": attempt.number - 1,
                               "reason": why})
            _count(count, "gave_up")
            return "gave_up"
        repo.audit(conn, attempt.execution_id, "webhook_attempt", now,
                   detail={"attempt": attempt.number, "url": attempt.url})

    if not config.secret:
        answer = Answer(None, "HITL_WEBHOOK_SECRET is not set on this worker", 0)
    else:
        raw = webhook.body(attempt.kwargs)
        answer = post(attempt.url, raw,
                      webhook.headers(attempt.execution_id, raw, config.secret))
    return _record(attempt, answer, clock(), give_up_at, config, count)


def _record(attempt: rows.Attempt, answer: Answer, now: datetime, give_up_at: datetime,
            config: Config, count: Callable[[str], None]) -> Outcome:
    result = {"attempt": attempt.number, "status": answer.status, "error": answer.error,
              "elapsed_ms": answer.elapsed_ms}
    with transaction() as conn:
        if answer.ok:
            rows.delivered(conn, attempt.outbox_id, now)
            repo.audit_many(conn, attempt.execution_id, now, [
                ("webhook_answered", None, result),
                ("exit_delivered", None, {"webhook": attempt.url,
                                          "attempts": attempt.number})])
            outcome = "delivered"
        else:
            delay = webhook.retry_delay_s(attempt.number, base_s=config.retry_base_s,
                                          max_s=config.retry_max_s)
            retry_at = now + timedelta(seconds=delay)
            if retry_at >= give_up_at:
                rows.given_up(conn, attempt.outbox_id, answer.describe(), now)
                repo.audit_many(conn, attempt.execution_id, now, [
                    ("webhook_failed", None, result),
                    ("webhook_gave_up", None, {
                        "url": attempt.url, "attempts": attempt.number,
                        "reason": f"not delivered within {config.give_up_s:g} s of the exit; "
                                  f"last: {answer.describe()}"})])
                outcome = "gave_up"
            else:
                rows.failed(conn, attempt.outbox_id, answer.describe(), retry_at)
                repo.audit(conn, attempt.execution_id, "webhook_failed", now,
                           detail={**result, "next_attempt_at": retry_at.isoformat()})
                outcome = "failed"
    _count(count, "delivered" if outcome == "delivered" else "failed")
    if outcome == "gave_up":
        _count(count, "gave_up")
        log.warning("webhook exit of %s given up after %d attempts: %s",
                    attempt.execution_id, attempt.number, answer.describe())
    elif outcome == "failed":
        log.info("webhook exit of %s: attempt %d failed (%s)", attempt.execution_id,
                 attempt.number, answer.describe())
    return outcome


def _count(count: Callable[[str], None], outcome: str) -> None:
    try:
        count(outcome)
    except Exception:  # a failing metric must not undo a recorded attempt
        log.exception("metrics: webhook attempt %s not counted", outcome)
