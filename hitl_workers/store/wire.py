"""Fewer round trips to PostgreSQL: what a transaction sends, and when.

PostgreSQL is the one part every worker host shares, so a transition's cost there is the
waiting on round trips as much as the statements themselves (docs/architecture.md). With psycopg2 a
transaction by default costs a round trip for ``BEGIN``, one per statement and one for
``COMMIT``. Inside :func:`folded_transaction` instead:

* ``BEGIN`` travels with the transaction's first statement, in the same message;
* a write nobody reads an answer from (executed with the execution option ``DEFER``) is not
  sent at once: it waits and travels with the next statement that does need an answer, or
  with ``COMMIT``;
* *riders* (statements another part of the process wants run in the next transaction, such
  as marking outbox rows sent, see :mod:`hitl_workers.services.delivery`) travel with
  ``BEGIN``.

psycopg2 sends a query with its parameters already interpolated (``cursor.mogrify``) over
PostgreSQL's simple query protocol, which runs several ``;``-separated statements of one
message in order, in the open transaction, each with its own snapshot (READ COMMITTED). So the
statements run exactly as if sent one by one; only the waiting is saved. An error in a
deferred write surfaces at the statement it travelled with (or at ``COMMIT``) and rolls the
whole transaction back, as it would have anyway. (psycopg 3's pipeline mode would also fold
``COMMIT`` into the last write; see docs/benchmarks.md for why the project stays on psycopg2.)
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy.engine import Connection, Engine

DEFER = "hitl_defer"
"""Execution option: this write needs no answer and may wait for the next statement."""

_PENDING = "hitl_wire_pending"


@dataclass
class WireStats:
    """What this process sent through folded transactions (the benchmark reads it)."""

    round_trips: int = 0
    statements: int = 0
    commits: int = 0


stats = WireStats()


@dataclass
class _Pending:
    chunks: list[bytes] = field(default_factory=list)
    begun: bool = False


class Rider(Protocol):
    """Something with statements to run in this process's next transaction."""

    def take(self) -> tuple[str, dict[str, Any]] | None:
        """A statement (pyformat parameters) to send with the next ``BEGIN``, or None."""

    def confirm(self, committed: bool) -> None:
        """How the transaction that took the statement ended."""

_riders: list[Rider] = []
_riders_lock = threading.Lock()


def add_rider(rider: Rider) -> None:
    """Register a source of statements to send with the next transaction's ``BEGIN``."""
    with _riders_lock:
        _riders.append(rider)


def folds(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg2"


@contextmanager
def folded_transaction(conn: Connection) -> Iterator[Connection]:
    """One transaction on ``conn`` with ``BEGIN`` and deferred writes folded (see above).

    The driver runs in autocommit mode meanwhile, so it sends no ``BEGIN`` or ``COMMIT`` of
    its own; this sends them. Riders are told how it ended (a rolled-back transaction gives
    back what it took).
    """
    conn.execution_options(isolation_level="AUTOCOMMIT")
    pending = _Pending([b"BEGIN"])
    raw: Any = conn.connection.dbapi_connection
    taken: list[Rider] = []
    cursor = raw.cursor()
    try:
        for rider in list(_riders):
            statement = rider.take()
            if statement is not None:
                pending.chunks.append(cursor.mogrify(*statement))
                taken.append(rider)
    finally:
        cursor.close()
    conn.info[_PENDING] = pending
    committed = False
    try:
        yield conn
        if pending.begun or len(pending.chunks) > 1:
            conn.exec_driver_sql("COMMIT")
            stats.commits += 1
        committed = True
    except BaseException:
        if pending.begun and not conn.invalidated:
            pending.chunks.clear()
            try:
                conn.exec_driver_sql("ROLLBACK")
            except Exception:
                conn.invalidate()  # the server or the socket is gone; the pool reconnects
        raise
    finally:
        if not conn.invalidated:
            conn.info.pop(_PENDING, None)
        for rider in taken:
            rider.confirm(committed)


def _pending(context: Any) -> _Pending | None:
    try:
        # The dialect's own first statements (its version query) run on a connection that
        # has no ``info`` yet.
        conn = context.root_connection
        found = None if conn.invalidated else conn.info.get(_PENDING)
    except (AttributeError, NotImplementedError):
        return None
    return found if isinstance(found, _Pending) else None


def _deferred(context: Any) -> bool:
    return bool(getattr(context, "execution_options", {}).get(DEFER))


def _send(cursor: Any, pending: _Pending, last: bytes) -> None:
    chunks = [*pending.chunks, last]
    pending.chunks.clear()
    pending.begun = True
    stats.round_trips += 1
    stats.statements += len(chunks)
    cursor.execute(b"; ".join(chunks))


def send(cursor: Any, statement: str, parameters: Any, context: Any) -> bool:
    """SQLAlchemy's ``do_execute`` hook: True when this sent (or deferred) the statement."""
    pending = _pending(context)
    if pending is None:
        return False
    if _deferred(context):
        pending.chunks.append(cursor.mogrify(statement, parameters))
        return True
    _send(cursor, pending, cursor.mogrify(statement, parameters))
    return True


def send_no_params(cursor: Any, statement: str, context: Any) -> bool:
    """SQLAlchemy's ``do_execute_no_params`` hook (``exec_driver_sql`` without parameters)."""
    pending = _pending(context)
    if pending is None:
        return False
    if _deferred(context):
        pending.chunks.append(statement.encode())
        return True
    _send(cursor, pending, statement.encode())
    return True


def send_many(cursor: Any, statement: str, parameters: Any, context: Any) -> bool:
    """SQLAlchemy's ``do_executemany`` hook: each parameter set as one statement."""
    pending = _pending(context)
    if pending is None:
        return False
    rendered = [cursor.mogrify(statement, p) for p in parameters]
    if _deferred(context):
        pending.chunks.extend(rendered)
        return True
    *before, last = rendered
    pending.chunks.extend(before)
    _send(cursor, pending, last)
    return True
