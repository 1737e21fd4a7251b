"""Retention deletes exactly what is past its period, and never what a step still needs.

Rows are written with timestamps in 1990 and the purge runs as if it were 2000-01-02 with a
one-day period, so the cutoff (2000-01-01) is far behind every other test's rows in the shared
database: only this test's rows can be old enough.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import redis
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from hitl_workers.notify.streams import StreamJanitor, stream_key
from hitl_workers.services import retention

OLD = datetime(1990, 1, 1, tzinfo=UTC)
RECENT = datetime(2001, 1, 1, tzinfo=UTC)  # after the cutoff
NOW = datetime(2000, 1, 2, tzinfo=UTC)
CLI = [sys.executable, "-m", "hitl_workers.cli"]
POLICY = retention.Policy(keep_for=timedelta(days=1), batch=2)  # tiny batches: many of them


@pytest.fixture(scope="module")
def engine(database_url: str) -> Iterator[Engine]:
    engine = sa.create_engine(database_url)
    yield engine
    engine.dispose()


def sql(engine: Engine, text: str, **params: object) -> list[sa.Row[object]]:
    with engine.begin() as conn:
        result = conn.execute(sa.text(text), params)
        return list(result) if result.returns_rows else []


def add_step(engine: Engine, execution_id: str, conversation_id: str, *, state: str,
             ended_at: datetime | None, outbox_sent: bool = True) -> None:
    """An execution with one of everything that hangs off it."""
    exit = {"exited": "timeout", "failed": "error"}.get(state)
    sql(engine, """INSERT INTO executions (execution_id, conversation_id, state, exit,
                                            requested_at, ended_at)
                   VALUES (:e, :c, :state, :exit, :at, :ended)""",
        e=execution_id, c=conversation_id, state=state, exit=exit, at=OLD, ended=ended_at)
    sql(engine, "INSERT INTO offers (execution_id, agent_id, updated_at) VALUES (:e, 'a1', :at)",
        e=execution_id, at=OLD)
    sql(engine, "INSERT INTO timers (execution_id, kind, due_at) VALUES (:e, 'timeout', :at)",
        e=execution_id, at=OLD)
    sql(engine, "INSERT INTO audit_events (execution_id, at, kind) VALUES (:e, :at, 'requested')",
        e=execution_id, at=OLD)
    sql(engine, """INSERT INTO outbox (dedupe_key, kind, execution_id, payload, created_at,
                                        sent_at)
                   VALUES (:key, 'exit', :e, '{}', :at, :sent)""",
        key=f"exit:{execution_id}", e=execution_id, at=OLD, sent=OLD if outbox_sent else None)


def add_conversation(engine: Engine, conversation_id: str, status: str, updated_at: datetime
                     ) -> None:
    sql(engine, """INSERT INTO conversations (conversation_id, status, tags, claimed_by,
                                               updated_at)
                   VALUES (:c, :status, '[]', '[]', :at)""",
        c=conversation_id, status=status, at=updated_at)


def rows_of(engine: Engine, execution_id: str) -> dict[str, int]:
    counts = {}
    for table in ("executions", "offers", "timers", "audit_events", "outbox"):
        counts[table] = sql(engine, f"SELECT count(*) FROM {table} WHERE execution_id = :e",
                            e=execution_id)[0][0]
    return counts


def test_an_old_ended_execution_goes_with_everything_that_hangs_off_it(engine):
    # Given executions that ended long ago, each way an execution can end
    token = uuid.uuid4().hex[:8]
    ended = {state: f"ret-{state}-{token}" for state in ("exited", "cancelled", "failed")}
    for state, execution_id in ended.items():
        add_step(engine, execution_id, f"conv-{execution_id}", state=state, ended_at=OLD)
    # When the purge runs
    purged = retention.purge(lambda: NOW, POLICY)
    # Then none of their rows is left, and the purge counted them
    for execution_id in ended.values():
        assert set(rows_of(engine, execution_id).values()) == {0}, execution_id
    assert purged.rows["executions"] >= 3
    for table in ("offers", "timers", "audit_events", "outbox"):
        assert purged.rows[table] >= 3


def test_what_a_step_still_needs_is_kept(engine):
    token = uuid.uuid4().hex[:8]
    waiting = f"ret-waiting-{token}"     # requested in 1990, still waiting
    unsent = f"ret-unsent-{token}"       # ended in 1990, exit message not yet published
    recent = f"ret-recent-{token}"       # ended after the cutoff
    add_step(engine, waiting, f"conv-{waiting}", state="waiting", ended_at=None)
    add_step(engine, unsent, f"conv-{unsent}", state="exited", ended_at=OLD, outbox_sent=False)
    add_step(engine, recent, f"conv-{recent}", state="exited", ended_at=RECENT)

    retention.purge(lambda: NOW, POLICY)

    for execution_id in (waiting, unsent, recent):
        assert rows_of(engine, execution_id) == {
            "executions": 1, "offers": 1, "timers": 1, "audit_events": 1, "outbox": 1,
        }, execution_id
    # Once its exit message is sent, the old ended execution goes with the next purge
    sql(engine, "UPDATE outbox SET sent_at = :at WHERE execution_id = :e", e=unsent, at=OLD)
    retention.purge(lambda: NOW, POLICY)
    assert set(rows_of(engine, unsent).values()) == {0}


def test_old_answers_dead_letters_and_idle_conversations_go(engine):
    token = uuid.uuid4().hex[:8]
    for event_id, at in ((f"old-{token}", OLD), (f"new-{token}", RECENT)):
        sql(engine, """INSERT INTO agent_events (agent_id, event_id, action, result, created_at)
                       VALUES ('a1', :ev, 'claim', '{}', :at)""", ev=event_id, at=at)
    for reason, at in ((f"old-{token}", OLD), (f"new-{token}", RECENT)):
        sql(engine, """INSERT INTO dead_letters (received_at, task_name, payload, reason)
                       VALUES (:at, 'hitl.claim', '{}', :reason)""", at=at, reason=reason)
    idle, claimed, busy, fresh = (f"ret-conv-{kind}-{token}"
                                  for kind in ("idle", "claimed", "busy", "fresh"))
    add_conversation(engine, idle, "open", OLD)
    add_conversation(engine, claimed, "claimed", OLD)  # a claim older than the period
    add_conversation(engine, busy, "open", OLD)  # an execution still refers to it
    add_conversation(engine, fresh, "claimed", RECENT)
    add_step(engine, f"ret-busy-{token}", busy, state="exited", ended_at=RECENT)

    retention.purge(lambda: NOW, POLICY)

    assert [r[0] for r in sql(engine, "SELECT event_id FROM agent_events WHERE event_id LIKE :t",
                              t=f"%-{token}")] == [f"new-{token}"]
    assert [r[0] for r in sql(engine, "SELECT reason FROM dead_letters WHERE reason LIKE :t",
                              t=f"%-{token}")] == [f"new-{token}"]
    left = {r[0] for r in sql(engine, "SELECT conversation_id FROM conversations "
                                      "WHERE conversation_id LIKE :t", t=f"%-{token}")}
    assert left == {busy, fresh}


def test_streams_of_removed_agents_are_deleted_and_old_entries_trimmed(engine, redis_urls):
    client = redis.Redis.from_url(redis_urls["redis"])
    token = uuid.uuid4().hex[:8]
    present, removed = f"ret-agent-{token}", f"ret-gone-{token}"
    sql(engine, """INSERT INTO agents (agent_id, status, rule_groups, updated_at)
                   VALUES (:a, 'available', '[]', :at)""", a=present, at=OLD)
    old_ms = int(OLD.timestamp() * 1000)
    for agent_id in (present, removed):
        client.xadd(stream_key(agent_id), {"event": "{}"}, id=f"{old_ms}-0")
        client.xadd(stream_key(agent_id), {"event": "{}"}, id=f"{old_ms + 10**12}-0")  # 2021

    purged = retention.purge(lambda: NOW, POLICY, StreamJanitor(client))

    assert not client.exists(stream_key(removed))
    assert [entry_id.decode() for entry_id, _ in client.xrange(stream_key(present))] == [
        f"{old_ms + 10**12}-0"]
    assert purged.rows["streams_deleted"] >= 1
    assert purged.rows["stream_entries"] >= 1


def test_the_purge_command_deletes_and_reports(engine, database_url):
    token = uuid.uuid4().hex[:8]
    execution_id = f"ret-cli-{token}"
    add_step(engine, execution_id, f"conv-{execution_id}", state="exited", ended_at=OLD)

    done = subprocess.run([*CLI, "purge", "--older-than", "3650d"],
                          capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    assert "executions" in done.stdout and "total" in done.stdout
    assert set(rows_of(engine, execution_id).values()) == {0}


def test_the_purge_command_refuses_a_bad_period(database_url):
    done = subprocess.run([*CLI, "purge", "--older-than", "soon"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--older-than" in done.stderr
