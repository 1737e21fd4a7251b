"""Webhook exits in the outbox (docs/contract.md §10, docs/guarantees.md P8), on PostgreSQL:
one attempt at a time, the backoff kept in the row, the give-up after 24 hours. The POST is a
function here, so the clock can be moved; tests/acceptance/test_webhooks.py POSTs for real."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from hitl_workers.clock import utcnow
from hitl_workers.domain.webhooks import WebhookPolicy
from hitl_workers.services import dispatch, webhooks
from hitl_workers.store import repo
from hitl_workers.store.db import transaction
from hitl_workers.store.tables import outbox

SECRET = "integration-webhook-secret-0123456789abcdef"
POLICY = WebhookPolicy.from_settings("127.0.0.1", SECRET)
CONFIG = webhooks.Config(SECRET, retry_base_s=10, retry_max_s=60, give_up_s=24 * 3600)
URL = "http://127.0.0.1:9/exit"


def exited_step(database_url: str, now: datetime) -> tuple[str, int]:
    """A step that exited at dispatch (nobody sees its tag), answering to URL."""
    execution_id = f"wh-{uuid.uuid4().hex[:10]}"
    defaults = dispatch.Defaults("flow.step_exited", "flow", 600, POLICY)
    with transaction() as conn:
        answer, effects = dispatch.submit(conn, (), {
            "execution_id": execution_id, "conversation_id": f"c-{execution_id}",
            "conversation": {"tags": [f"nobody:{execution_id}"]},
            "reply_to": {"webhook": URL}}, task_id=None, now=now, defaults=defaults)
    assert answer["exit"] == "not_claimed"
    (message,) = effects.outbox
    assert message.payload["webhook"] is True and "task" not in message.payload
    return execution_id, message.id


class Posts:
    def __init__(self, *statuses: int | None) -> None:
        self.statuses = list(statuses)
        self.calls: list[tuple[str, bytes, dict[str, str]]] = []

    def __call__(self, url: str, body: bytes, headers: dict[str, str]) -> webhooks.Answer:
        self.calls.append((url, body, headers))
        status = self.statuses.pop(0)
        return webhooks.Answer(status, None if status else "ConnectError: refused", 3)


def row(outbox_id: int) -> Any:
    with transaction() as conn:
        return conn.execute(sa.select(outbox).where(outbox.c.id == outbox_id)).one()


def webhook_audit(execution_id: str) -> list[tuple[str, Any]]:
    with transaction() as conn:
        return [(e.kind, e.detail) for e in repo.audit_trail(conn, execution_id)
                if e.kind.startswith("webhook_")]


def test_a_failure_waits_for_its_backoff_and_a_success_ends_delivery(database_url):
    t0 = utcnow()
    execution_id, outbox_id = exited_step(database_url, t0)
    posts, counted = Posts(503, 200), []
    # The first attempt fails: the row waits for its backoff (10 s, with jitter: 5–10 s)
    assert webhooks.deliver(outbox_id, posts, lambda: t0, CONFIG, counted.append) == "failed"
    failed = row(outbox_id)
    assert failed.sent_at is None and failed.attempts == 1 and failed.last_error == "HTTP 503"
    assert t0 + timedelta(seconds=5) <= failed.next_attempt_at <= t0 + timedelta(seconds=10)
    # A copy of the task arriving before then, and the reconciler, leave it alone
    assert webhooks.deliver(outbox_id, posts, lambda: t0 + timedelta(seconds=4), CONFIG) == \
        "not_due"
    with transaction() as conn:
        stale = repo.claim_stale_outbox(conn, t0 + timedelta(seconds=4),
                                        t0 + timedelta(seconds=4), 10_000)
    assert outbox_id not in stale
    # Once it has passed, the next attempt is made, and a 200 ends delivery
    later = t0 + timedelta(seconds=11)
    assert webhooks.deliver(outbox_id, posts, lambda: later, CONFIG, counted.append) == \
        "delivered"
    done = row(outbox_id)
    assert done.sent_at == later and done.attempts == 2 and done.last_error is None
    assert webhooks.deliver(outbox_id, posts, lambda: later, CONFIG) == "not_due"
    assert len(posts.calls) == 2 and counted == ["failed", "delivered"]
    # The same signed body both times
    (_, first, headers), (_, second, _) = posts.calls
    assert first == second and headers["Hitl-Delivery"] == f"exit:{execution_id}"
    assert [k for k, _ in webhook_audit(execution_id)] == [
        "webhook_attempt", "webhook_failed", "webhook_attempt", "webhook_answered"]


def test_an_attempt_in_flight_holds_a_lease_that_a_second_deliverer_respects(database_url):
    t0 = utcnow()
    _, outbox_id = exited_step(database_url, t0)
    inner: list[str] = []

    def post_while_another_tries(url: str, body: bytes, headers: dict[str, str]
                                 ) -> webhooks.Answer:
        # A second copy of the task runs while this POST is in flight
        inner.append(webhooks.deliver(outbox_id, Posts(200), lambda: t0, CONFIG))
        return webhooks.Answer(200, None, 1)

    assert webhooks.deliver(outbox_id, post_while_another_tries, lambda: t0, CONFIG) == \
        "delivered"
    assert inner == ["not_due"] and row(outbox_id).attempts == 1


def test_after_24_hours_the_exit_is_given_up_with_a_final_audit_entry(database_url):
    t0 = utcnow()
    execution_id, outbox_id = exited_step(database_url, t0)
    counted: list[str] = []
    # An attempt 23 h 59 m 58 s after the exit fails: its retry would come after 24 h
    late = t0 + timedelta(hours=24) - timedelta(seconds=2)
    assert webhooks.deliver(outbox_id, Posts(None), lambda: late, CONFIG, counted.append) == \
        "gave_up"
    given_up = row(outbox_id)
    assert given_up.sent_at == late  # done: retention may delete it with its execution
    assert given_up.last_error.startswith("gave up: ConnectError")
    kinds = [k for k, _ in webhook_audit(execution_id)]
    assert kinds == ["webhook_attempt", "webhook_failed", "webhook_gave_up"]
    assert counted == ["failed", "gave_up"]
    assert webhooks.deliver(outbox_id, Posts(200), lambda: late, CONFIG) == "not_due"


def test_a_row_first_tried_after_24_hours_is_given_up_without_a_post(database_url):
    t0 = utcnow()
    execution_id, outbox_id = exited_step(database_url, t0)
    posts = Posts(200)
    assert webhooks.deliver(outbox_id, posts, lambda: t0 + timedelta(hours=25), CONFIG) == \
        "gave_up"
    assert posts.calls == [] and row(outbox_id).sent_at is not None
    assert [k for k, _ in webhook_audit(execution_id)] == ["webhook_gave_up"]
