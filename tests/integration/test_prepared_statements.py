"""Prepared statements on the folded path (hitl_workers/store/wire.py) against a real
PostgreSQL: a statement sent twice is prepared once per connection and then executed by name
with the same result; one PostgreSQL cannot prepare keeps working as text; a server that
forgot them costs one retryable error, not a broken worker."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import OperationalError

from hitl_workers.store import wire
from hitl_workers.store.db import transaction


def prepared_here(conn: sa.Connection) -> set[str]:
    return {row[0] for row in conn.exec_driver_sql(
        "SELECT name FROM pg_prepared_statements WHERE name LIKE 'hitl_%%'")}


def run(statement: sa.TextClause, **params: object) -> list[tuple[object, ...]]:
    with transaction() as conn:
        return [tuple(row) for row in conn.execute(statement, params)]


def test_a_statement_sent_again_is_prepared_once_and_answers_the_same(database_url):
    tag = uuid.uuid4().hex  # a statement text of its own: this test's alone
    statement = sa.text(f"SELECT :a || '-{tag}', CAST(:n AS integer) + 1; "
                        f"SELECT :a || '-again'")
    answers = [run(statement, a=f"x{i}", n=i) for i in range(4)]
    # Each call answers with its own values (the last SELECT's rows), whether sent as text
    # (the first two) or by name (the others)
    assert answers == [[(f"x{i}-again",)] for i in range(4)]
    with transaction() as conn:
        names = prepared_here(conn)
        plan = wire._plans[statement.text.replace(":a", "%(a)s").replace(":n", "%(n)s")]
    assert plan is not None and len(plan.parts) == 2
    assert {part.name for part in plan.parts} <= names


def test_a_statement_postgres_cannot_prepare_goes_on_as_text(database_url):
    tag = uuid.uuid4().hex
    # Nothing says what type a parameter that is only tested for NULL has
    statement = sa.text(f"SELECT :v IS NULL, '{tag}'")
    for i in range(4):
        assert run(statement, v=None if i % 2 else "v") == [(bool(i % 2), tag)]
    assert wire._plans[statement.text.replace(":v", "%(v)s")] is None


def test_a_server_that_forgot_them_costs_one_retryable_error(database_url):
    tag = uuid.uuid4().hex
    statement = sa.text(f"SELECT :a || '-{tag}'")
    for _ in range(3):
        run(statement, a="x")
    with transaction() as conn:  # a pooler's DISCARD ALL, say
        conn.exec_driver_sql("DEALLOCATE ALL")
    with pytest.raises(OperationalError, match="prepared statement lost"):
        run(statement, a="y")  # the task retries on OperationalError
    assert run(statement, a="z") == [(f"z-{tag}",)]
