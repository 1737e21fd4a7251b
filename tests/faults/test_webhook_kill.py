"""``kill -9`` of the webhook worker while its POST of an exit is in flight.

The attempt was claimed (a lease on the outbox row) and audited before the POST; the worker
dies before the answer is recorded. Once the lease has run out the reconciler hands the row
to the restarted worker, which delivers it: the flow engine's logic gets the exit once.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

import pytest
import sqlalchemy as sa

from hitl_workers.services.webhooks import LEASE_S
from hitl_workers.store.tables import audit_events, outbox
from tests.faults.harness import wait_until
from tests.support.webhook_receiver import Receiver

WORKERS = {"wh-core": (("hitl.requests", "hitl.events", "hitl.timers", "hitl.outbox"), 2),
           "wh-webhooks": (("hitl.webhooks",), 2)}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fx(fault_system):
    return fault_system(workers=WORKERS)


def test_a_webhook_exit_survives_its_worker_being_killed_mid_post(fx):
    # Given a receiver that holds the first POST open (and then answers it 503: that
    # answer reaches nobody), and answers every later one 200
    held = threading.Event()
    with Receiver(os.environ["HITL_WEBHOOK_SECRET"], hold=held, hold_posts=(1,),
                  answer=lambda n: 503 if n == 1 else 200) as receiver:
        # When a step exits at once (nobody sees its tag) and the webhook worker is killed
        # while its POST is in flight
        execution_id = f"wh-kill-{uuid.uuid4().hex[:8]}"
        answer = fx.app.send_task("hitl.request_assistance", kwargs={
            "execution_id": execution_id, "conversation_id": f"conv-{execution_id}",
            "conversation": {"tags": [f"nobody:{uuid.uuid4().hex[:6]}"]},
            "reply_to": {"webhook": receiver.url()}}).get(timeout=30)
        assert answer["exit"] == "not_claimed"
        wait_until(lambda: len(receiver.posts) == 1, 20, "the first POST")
        fx.system.kill(["wh-webhooks"])
        killed_at = time.monotonic()
        held.set()
        fx.system.restart_workers(["wh-webhooks"])
        # Then the exit is delivered once the attempt's lease has run out
        exit_kwargs = receiver.wait_for(execution_id, timeout=LEASE_S + 30)
        assert exit_kwargs["merge_field"] == {"reason": "NO_AGENTS"}
        assert time.monotonic() - killed_at < LEASE_S + 30
        assert receiver.handed_to_logic == 1
        # and both attempts are in the audit trail: the first without an outcome
        trail = fx.db.rows(sa.select(audit_events.c.kind, audit_events.c.detail).where(
            audit_events.c.execution_id == execution_id).order_by(audit_events.c.id))
        webhook = [(k, (d or {}).get("attempt")) for k, d in trail if k.startswith("webhook_")]
        assert webhook == [("webhook_attempt", 1), ("webhook_attempt", 2),
                           ("webhook_answered", 2)]
        (row,) = fx.db.rows(sa.select(outbox).where(outbox.c.execution_id == execution_id,
                                                    outbox.c.kind == "exit"))
        assert row.sent_at is not None and row.attempts == 2
