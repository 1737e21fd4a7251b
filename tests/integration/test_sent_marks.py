"""Outbox "sent" marks in batches (docs/guarantees.md §3): no transaction of their own per task;
they ride with the process's next transaction, and nothing is lost when it rolls back."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from hitl_workers.clock import utcnow
from hitl_workers.services.delivery import SentMarks
from hitl_workers.services.effects import OutboxMessage
from hitl_workers.store import repo, wire
from hitl_workers.store.db import transaction
from hitl_workers.store.tables import audit_events, outbox
from tests.support.steps import eventually


@pytest.fixture
def marks(database_url: str) -> Iterator[SentMarks]:
    marks = SentMarks(flush_after_s=3600)  # no idle flush during the test
    yield marks
    wire._riders.remove(marks)


def queued_exit() -> OutboxMessage:
    execution_id = f"exec-{uuid.uuid4().hex[:12]}"
    payload = {"task": "flow.exit", "queue": "flow-q", "kwargs": {"execution_id": execution_id}}
    with transaction() as conn:
        ids = repo.add_outbox_many(conn, [{"dedupe_key": f"exit:{execution_id}", "kind": "exit",
                                           "execution_id": execution_id,
                                           "payload": payload}], utcnow())
    return OutboxMessage(ids[f"exit:{execution_id}"], "exit", execution_id, payload)


def state(message: OutboxMessage) -> tuple[Any, int]:
    with transaction() as conn:
        sent_at = conn.execute(sa.select(outbox.c.sent_at).where(
            outbox.c.id == message.id)).scalar_one()
        delivered = conn.execute(sa.select(sa.func.count()).where(
            audit_events.c.execution_id == message.execution_id,
            audit_events.c.kind == "exit_delivered")).scalar_one()
    return sent_at, delivered


def test_marks_ride_with_the_next_transaction_and_are_written_once(marks):
    first, second = queued_exit(), queued_exit()
    marks.add([first, second], utcnow())
    assert marks.pending() == 2
    with transaction() as conn:  # any transaction of this process carries them
        conn.execute(sa.text("SELECT 1"))
    assert marks.pending() == 0
    for message in (first, second):
        sent_at, delivered = state(message)
        assert sent_at is not None and delivered == 1
    marks.add([first], utcnow())  # marked again (a re-send): no second audit row
    with transaction() as conn:
        conn.execute(sa.text("SELECT 1"))
    assert state(first)[1] == 1


def a_transaction_that_fails() -> None:
    with transaction() as conn:
        conn.execute(sa.text("SELECT 1"))
        raise RuntimeError("the transition failed")


def test_marks_taken_by_a_transaction_that_rolls_back_are_written_on_their_own(marks):
    message = queued_exit()
    marks.add([message], utcnow())
    with pytest.raises(RuntimeError, match="the transition failed"):
        a_transaction_that_fails()
    assert state(message)[0] is None  # rolled back with it
    marks.flush()
    sent_at, delivered = state(message)
    assert sent_at is not None and delivered == 1


def test_a_busy_process_runs_no_transaction_of_its_own_for_its_marks(database_url):
    marks = SentMarks(flush_after_s=0.3)
    try:
        # A process publishing and running a transaction every 0.1 s, for 1.5 s: each of its
        # transactions carries the marks the one before published
        commits = wire.stats.commits
        published = []
        for _ in range(15):
            with transaction() as conn:
                conn.execute(sa.text("SELECT 1"))
            published.append(queued_exit())
            marks.add(published[-1:], utcnow())
            time.sleep(0.1)
        # 30 transactions: the loop's 15 and queued_exit's 15; the flusher added none
        assert wire.stats.commits - commits == 30
        # Idle now: the last mark is written by the flusher within about flush_after_s
        assert eventually(lambda: state(published[-1])[0] is not None, timeout=3)
        assert all(state(m)[0] is not None for m in published)
    finally:
        wire._riders.remove(marks)
