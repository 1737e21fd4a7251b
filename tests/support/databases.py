"""The one database factory for every test tier and the benchmarks.

A test or benchmark system gets a database of its own, dropped and re-created so nothing a
previous run left behind is seen, then migrated with the project's own migrations (the same
``hitl-workers db upgrade`` runs). PostgreSQL databases are made through its ``postgres``
maintenance database; a SQLite database is a file, removed and re-created.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url

PG_NAME_MAX = 63  # PostgreSQL truncates longer identifiers


class DatabaseUnavailable(RuntimeError):
    """PostgreSQL did not answer; the message says where it was looked for."""


def named(url: str, suffix: str) -> str:
    """``url`` with ``suffix`` appended to its database name (a second system's database)."""
    parsed = make_url(url)
    return _text(parsed.set(database=f"{parsed.database}{suffix}"[:PG_NAME_MAX]))


def fresh(url: str, *, migrate: bool = True) -> str:
    """Drop and re-create the database at ``url``, migrated to head unless ``migrate`` is
    False; returns ``url``. Raises :class:`DatabaseUnavailable` when PostgreSQL is away."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database:
            Path(parsed.database).unlink(missing_ok=True)
    else:
        _admin(parsed, f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)',
               f'CREATE DATABASE "{parsed.database}"')
    if migrate:
        from hitl_workers.store.migrate import upgrade

        upgrade(url)
    return url


def drop(url: str, *, quiet: bool = True) -> None:
    """Drop the database at ``url``. With ``quiet``, an unreachable PostgreSQL is ignored (the
    next run drops it before use)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database:
            Path(parsed.database).unlink(missing_ok=True)
        return
    try:
        _admin(parsed, f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)')
    except DatabaseUnavailable:
        if not quiet:
            raise


def _admin(parsed: URL, *statements: str) -> None:
    # CREATE/DROP DATABASE cannot run in a transaction, nor while connected to that database.
    admin = sa.create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            for statement in statements:
                conn.exec_driver_sql(statement)
    except sa.exc.OperationalError as exc:
        raise DatabaseUnavailable(
            f"PostgreSQL at {parsed.render_as_string(hide_password=True)} is not reachable: "
            f"{exc.orig!r}. Start it (see .ci/run) or point HITL_TEST_DATABASE_URL at one."
        ) from exc
    finally:
        admin.dispose()


def _text(url: URL) -> str:
    return url.render_as_string(hide_password=False)
