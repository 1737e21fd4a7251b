"""The migrations and ``store/tables.py`` describe one schema.

``tables.py`` is what the code queries; the Alembic migrations are what ``hitl-workers db
upgrade`` builds. Given a database built by the migrations alone, when Alembic's autogenerate
compares it with the table definitions, then it finds nothing to add, drop or alter — on
PostgreSQL (production) and on SQLite (``make run``). A change to one without the other fails
here, naming the difference.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from hitl_workers.store.tables import metadata
from tests.support import databases


def _same_default(_context: Any, _inspected: Any, _column: Any, inspected_default: str | None,
                  _metadata_default: Any, rendered_metadata_default: str | None) -> bool | None:
    """False (no change) when the two defaults are the same text once quotes and parentheses
    are stripped; otherwise Alembic's own comparison decides. (Alembic's SQLite comparison
    reports an empty-string default, ``''``, as changed against itself.)"""
    def bare(text: str | None) -> str | None:
        return None if text is None else text.strip("()'\"")
    if bare(inspected_default) == bare(rendered_metadata_default):
        return False
    return None


def _for_this_dialect(dialect: str) -> Any:
    """Alembic's ``include_object``: leave out what ``tables.py`` creates only on another
    dialect (``.ddl_if(dialect="postgresql")``, such as a GIN index), as ``create_all`` does."""
    def include(obj: Any, _name: Any, _type: str, _reflected: bool, _compare_to: Any) -> bool:
        only_on = getattr(getattr(obj, "_ddl_if", None), "dialect", None)
        return only_on is None or only_on == dialect
    return include


def differences(url: str) -> list[Any]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={
                "compare_type": True, "compare_server_default": _same_default,
                "include_object": _for_this_dialect(engine.dialect.name)})
            return list(compare_metadata(context, metadata))
    finally:
        engine.dispose()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    url = databases.named(os.environ["HITL_DATABASE_URL"], "_drift")
    try:
        databases.fresh(url)
    except databases.DatabaseUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    yield url
    databases.drop(url)


def test_the_migrations_build_the_tables_py_schema_on_postgresql(postgres_url: str) -> None:
    assert differences(postgres_url) == []


def test_the_migrations_build_the_tables_py_schema_on_sqlite(tmp_path: Path) -> None:
    url = databases.fresh(f"sqlite:///{tmp_path / 'drift.db'}")
    assert differences(url) == []


def test_the_comparison_sees_a_column_the_migrations_lack(tmp_path: Path) -> None:
    # The check can fail: a column added to tables.py alone is reported.
    url = databases.fresh(f"sqlite:///{tmp_path / 'drift.db'}")
    column = sa.Column("added_without_migration", sa.Integer, nullable=True)
    metadata.tables["agents"].append_column(column)
    try:
        found = differences(url)
    finally:
        metadata.tables["agents"]._columns.remove(column)
    assert [d[0] for d in found] == ["add_column"]
    assert found[0][3].name == "added_without_migration"
