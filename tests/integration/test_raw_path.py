"""The transitions' statements on the raw psycopg2 cursor (hitl_workers/store/wire.py: fetch
and defer) against a real PostgreSQL: one server transaction with everything else sent in it,
SQLAlchemy's exceptions (what the tasks retry on), a lost connection that the next
transaction survives, the driver left as SQLAlchemy expects it, and counted as sent."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, OperationalError

from hitl_workers.clock import utcnow
from hitl_workers.store import repo, wire
from hitl_workers.store.db import get_engine, transaction
from hitl_workers.store.tables import agent_events, audit_events


@pytest.fixture
def postgres(database_url: str) -> None:
    if not database_url.startswith("postgresql"):
        pytest.fail("these tests need PostgreSQL (HITL_TEST_DATABASE_URL)")


def audits(execution_id: str) -> list[tuple[str, object]]:
    with get_engine().connect() as conn:
        return [tuple(r) for r in conn.execute(
            sa.select(audit_events.c.kind, audit_events.c.detail)
            .where(audit_events.c.execution_id == execution_id).order_by(audit_events.c.id))]


def in_one_transaction(work: Callable[[sa.Connection], object]) -> None:
    with transaction() as conn:
        work(conn)


def test_raw_and_sqlalchemy_statements_share_one_server_transaction(postgres):
    execution_id = f"raw-{uuid.uuid4().hex}"
    with transaction() as conn:
        first = wire.fetch(conn, "SELECT txid_current() AS t")[0]["t"]
        repo.audit_many(conn, execution_id, utcnow(), [("requested", None, None),
                                                       ("claimed", "agent-a", {"n": 1})])
        through_sqlalchemy = conn.exec_driver_sql("SELECT txid_current()").scalar_one()
        last = wire.fetch(conn, "SELECT txid_current() AS t")[0]["t"]
        raw = conn.connection.dbapi_connection
        assert raw.autocommit  # the driver sends no BEGIN of its own: wire.py sends it
    assert first == through_sqlalchemy == last
    # Written as SQLAlchemy's JSON type writes it: a missing detail is JSON null
    assert audits(execution_id) == [("requested", None), ("claimed", {"n": 1})]
    assert not raw.autocommit  # left as SQLAlchemy's pool expects it


def test_a_deferred_write_that_fails_at_commit_rolls_everything_back(postgres):
    agent_id, event_id = f"agent-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    execution_id = f"raw-{uuid.uuid4().hex}"

    def store(conn: sa.Connection) -> None:
        repo.store_event_result(conn, agent_id=agent_id, event_id=event_id, action="claim",
                                execution_id=execution_id, result={"ok": True}, now=utcnow())

    with transaction() as conn:
        store(conn)
    def audit_and_store(conn: sa.Connection) -> None:
        repo.audit_many(conn, execution_id, utcnow(), [("requested", None, None)])
        store(conn)  # deferred: fails when COMMIT carries it

    with pytest.raises(IntegrityError):  # in_transaction retries on it: a twin won
        in_one_transaction(audit_and_store)
    assert audits(execution_id) == []
    with transaction() as conn:  # the connection is fine for the next transaction
        assert wire.fetch(conn, "SELECT 1 AS one") == [{"one": 1}]
        found = conn.execute(sa.select(agent_events.c.result).where(
            agent_events.c.agent_id == agent_id)).scalar_one()
    assert found == {"ok": True}


def test_an_error_on_the_raw_cursor_is_sqlalchemys_and_rolls_back(postgres):
    execution_id = f"raw-{uuid.uuid4().hex}"

    def audit_and_fail(conn: sa.Connection) -> None:
        repo.audit_many(conn, execution_id, utcnow(), [("requested", None, None)])
        wire.fetch(conn, "SELECT no_such_column FROM executions")

    with pytest.raises(sa.exc.ProgrammingError):
        in_one_transaction(audit_and_fail)
    assert audits(execution_id) == []


def test_a_lost_connection_is_a_retryable_error_and_the_next_transaction_works(postgres):
    killer = sa.create_engine(get_engine().url)

    def lose_the_connection(conn: sa.Connection) -> None:
        pid = wire.fetch(conn, "SELECT pg_backend_pid() AS pid")[0]["pid"]
        with killer.connect() as other:
            other.exec_driver_sql(f"SELECT pg_terminate_backend({pid})")
        wire.fetch(conn, "SELECT 1")

    try:
        with pytest.raises(OperationalError) as caught:  # the tasks retry OperationalError
            in_one_transaction(lose_the_connection)
    finally:
        killer.dispose()
    assert caught.value.connection_invalidated
    with transaction() as conn:
        assert wire.fetch(conn, "SELECT 2 AS two") == [{"two": 2}]


def test_outside_a_folded_transaction_they_go_through_sqlalchemy(postgres):
    execution_id = f"raw-{uuid.uuid4().hex}"
    with get_engine().begin() as conn:
        repo.audit_many(conn, execution_id, utcnow(), [("requested", None, {"a": 1})])
        assert wire.fetch(conn, "SELECT count(*) AS n FROM audit_events "
                                "WHERE execution_id = %(e)s", {"e": execution_id}) == [{"n": 1}]
    assert audits(execution_id) == [("requested", {"a": 1})]


def test_raw_statements_are_counted_as_sent(postgres):
    def one() -> tuple[int, int, int]:
        before = (wire.stats.round_trips, wire.stats.statements, wire.stats.commits)
        with transaction() as conn:
            repo.audit_many(conn, f"raw-{uuid.uuid4().hex}", utcnow(),
                            [("requested", None, None)])
            wire.fetch(conn, "SELECT 1")
        after = (wire.stats.round_trips, wire.stats.statements, wire.stats.commits)
        return after[0] - before[0], after[1] - before[1], after[2] - before[2]

    for _ in range(3):  # the INSERT seen twice and prepared (a PREPARE is a round trip too)
        one()
    # BEGIN + the deferred INSERT + SELECT in one message, then COMMIT
    assert one() == (2, 4, 1)
