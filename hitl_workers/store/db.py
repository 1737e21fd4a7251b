"""Engines and transactions.

One engine per process: a forked Celery child must never reuse its parent's connections
(they would be shared sockets), so the engine is created lazily and re-created when the
process id changes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from hitl_workers.settings import get_settings
from hitl_workers.store import wire

_engine: Engine | None = None
_engine_pid: int | None = None


def make_engine(url: str, pool_size: int = 5) -> Engine:
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # Let pysqlite leave transactions to us, so BEGIN IMMEDIATE below takes the write
            # lock up front: two workers then queue for it instead of deadlocking on upgrade.
            dbapi_conn.isolation_level = None
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @sa.event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Connection) -> None:
            # A reader (see read_only) takes no write lock: with WAL it reads a snapshot
            # while one writer works.
            read_only = conn.get_execution_options().get(_READ_ONLY, False)
            conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

        return engine
    # No pool_pre_ping: it costs a round trip per transaction. A connection that died (a
    # PostgreSQL restart) fails its first statement instead; SQLAlchemy then invalidates the
    # pool and the task retries on OperationalError with a fresh connection.
    engine = sa.create_engine(url, pool_size=pool_size, max_overflow=pool_size,
                              pool_recycle=1800)
    if engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg2":
        sa.event.listen(engine, "do_execute", wire.send)
        sa.event.listen(engine, "do_execute_no_params", wire.send_no_params)
        sa.event.listen(engine, "do_executemany", wire.send_many)
    return engine


def get_engine() -> Engine:
    global _engine, _engine_pid
    if _engine is None or _engine_pid != os.getpid():
        if _engine is not None:
            # Inherited from the parent across fork: drop the pool without closing the
            # parent's sockets.
            _engine.dispose(close=False)
        settings = get_settings()
        _engine = make_engine(settings.database_url, settings.db_pool_size)
        _engine_pid = os.getpid()
    return _engine


def reset_engine() -> None:
    global _engine, _engine_pid
    if _engine is not None:
        _engine.dispose(close=_engine_pid == os.getpid())
    _engine, _engine_pid = None, None


_AFTER_COMMIT = "hitl_after_commit"
_READ_ONLY = "hitl_read_only"
log = logging.getLogger(__name__)


@contextmanager
def _begin(engine: Engine) -> Iterator[Connection]:
    """A connection in a transaction that commits on success: on PostgreSQL with its BEGIN
    folded into the first statement (:mod:`hitl_workers.store.wire`), elsewhere SQLAlchemy's."""
    if wire.folds(engine):
        with engine.connect() as conn, wire.folded_transaction(conn):
            yield conn
    else:
        with engine.begin() as conn:
            yield conn


@contextmanager
def transaction() -> Iterator[Connection]:
    """One transaction: commits on success, rolls back on any exception.

    Callbacks registered with :func:`after_commit` run once the commit has succeeded.
    """
    callbacks: list[Callable[[], None]] = []
    with _begin(get_engine()) as conn:
        conn.info[_AFTER_COMMIT] = callbacks
        try:
            yield conn
        finally:
            # ``info`` belongs to the pooled DBAPI connection: never leave the list behind.
            # An invalidated connection (PostgreSQL restarted under it) has none: touching
            # ``conn.info`` would try to reconnect and replace the OperationalError that
            # callers retry on with a PendingRollbackError that nobody retries.
            if not conn.invalidated:
                conn.info.pop(_AFTER_COMMIT, None)
    for callback in callbacks:
        try:
            callback()
        except Exception:  # the data is committed; a failing observer must not undo the task
            log.exception("after-commit callback %r failed", callback)


@contextmanager
def read_only() -> Iterator[Connection]:
    """A transaction that only reads (the gateway's lists, metrics, ``show``, ``status``).

    On SQLite it does not queue for the write lock behind the workers; on PostgreSQL it is an
    ordinary transaction.
    """
    with get_engine().connect() as conn:
        conn.execution_options(**{_READ_ONLY: True})
        with conn.begin():
            yield conn


def after_commit(conn: Connection, callback: Callable[[], None]) -> None:
    """Run ``callback`` after the :func:`transaction` that ``conn`` belongs to commits.

    Never after a rollback, so a transaction retried from scratch is observed once. Outside a
    :func:`transaction` (a caller that opened its own) the callback is dropped.
    """
    callbacks = conn.info.get(_AFTER_COMMIT)
    if callbacks is not None:
        callbacks.append(callback)


def is_postgres(conn: Connection) -> bool:
    return conn.dialect.name == "postgresql"


def ping(conn: Connection) -> None:
    """Raises when the database does not answer (the gateway's ``/healthz``)."""
    conn.execute(sa.text("SELECT 1"))
