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

**Prepared statements.** Sent as text, each statement is parsed and planned by PostgreSQL
every time: for the transitions' locked reads and one-statement writes that is about two
thirds of the server's CPU for them (docs/benchmarks.md). So a statement with named
parameters that this process sent before is prepared once per connection (``PREPARE``, with
``$n`` for its parameters), *after* the transaction that used it ended and outside any
transaction, so a statement PostgreSQL cannot prepare (a parameter whose type it cannot
infer) costs nothing but the attempt: it is then never tried again and keeps going as text.
From then on the connection sends ``EXECUTE name(values)``, the values rendered by psycopg2
as before, in the same messages and at the same places: statements, order, locks and
snapshots are unchanged. A statement text holding several statements is prepared part by
part.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import psycopg2
import psycopg2.errors
from sqlalchemy.engine import Connection, Engine

log = logging.getLogger(__name__)

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
    to_prepare: list[_Plan] = field(default_factory=list)  # seen here, not yet prepared


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
    if pending.to_prepare and not conn.invalidated:
        _prepare(raw, pending.to_prepare)


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
    try:
        cursor.execute(b"; ".join(chunks))
    except psycopg2.errors.InvalidSqlStatementName as exc:
        # The server forgot this connection's prepared statements (a pooler's DISCARD ALL):
        # prepare them again from scratch, and let the task retry as after a lost connection.
        _prepared_on(cursor.connection).clear()
        raise psycopg2.OperationalError(f"prepared statement lost: {exc}") from exc


def send(cursor: Any, statement: str, parameters: Any, context: Any) -> bool:
    """SQLAlchemy's ``do_execute`` hook: True when this sent (or deferred) the statement."""
    pending = _pending(context)
    if pending is None:
        return False
    text = _rendered(cursor, statement, parameters, pending)
    if _deferred(context):
        pending.chunks.append(text)
        return True
    _send(cursor, pending, text)
    return True


# --- prepared statements ---------------------------------------------------------------------

MAX_PREPARED = 128
"""Statements prepared per connection at most (statement texts that vary, such as multi-row
``VALUES`` of every length, would otherwise grow without end); the rest go as text."""
MAX_TEXTS = 2000
"""Statement texts this process remembers (seen once, or planned) at most."""
_PARAM = re.compile(r"%\((\w+)\)s")
_PREPARABLE = re.compile(r"^\s*(SELECT|INSERT|UPDATE|DELETE|WITH)\b", re.IGNORECASE)
_STATE_BY_PARAMETER = re.compile(r"\b(WHERE|AND|OR)\s+(\w+\.)?state\s*(=|IN\b)\s*\(?\s*%\(",
                                 re.IGNORECASE)
"""A filter on a ``state`` column by a parameter. Left as text: the partial indexes on state
(``WHERE state = 'pending'``, ``'waiting'``) serve a plan made for the value, and a generic
plan of a prepared statement, made for any ``$n``, could not use them."""
_PREPARED = "hitl_wire_prepared"


@dataclass(frozen=True)
class _Part:
    name: str  # the prepared statement's name: from its text, the same on every connection
    sql: str  # with $1, $2 … for its parameters
    params: tuple[str, ...]  # the parameter names, in $ order


@dataclass(frozen=True)
class _Plan:
    parts: tuple[_Part, ...]


_plans: dict[str, _Plan | None] = {}  # statement text -> how to prepare it (None: never)
_seen: set[str] = set()  # statement texts sent once: the second time, they are prepared
_plans_lock = threading.Lock()


def _rendered(cursor: Any, statement: str, parameters: Any, pending: _Pending) -> bytes:
    """The bytes to send for ``statement``: ``EXECUTE`` of its prepared parts when this
    connection has them, else the statement with its parameters interpolated (and, on its
    second sight in this process, noted for preparing once the transaction is over)."""
    plan = _plan(statement, parameters)
    if plan is None:
        return bytes(cursor.mogrify(statement, parameters))
    prepared = _prepared_on(cursor.connection)
    if all(part.name in prepared for part in plan.parts):
        return b"; ".join(
            cursor.mogrify(f"EXECUTE {part.name}({', '.join(['%s'] * len(part.params))})",
                           [parameters[p] for p in part.params])
            if part.params else f"EXECUTE {part.name}".encode()
            for part in plan.parts)
    if len(prepared) < MAX_PREPARED:
        pending.to_prepare.append(plan)
    return bytes(cursor.mogrify(statement, parameters))


def _plan(statement: str, parameters: Any) -> _Plan | None:
    if not isinstance(parameters, Mapping) or not parameters:
        return None
    found = _plans.get(statement, False)
    if found is not False:
        return found  # type: ignore[return-value]
    with _plans_lock:
        if statement not in _seen:
            if len(_seen) >= MAX_TEXTS:
                _seen.clear()  # texts that vary without end (literals rendered in) stay text
            _seen.add(statement)  # a one-off (a varying text) is not worth a PREPARE
            return None
        _seen.discard(statement)
        if len(_plans) >= MAX_TEXTS:
            return None
        _plans[statement] = _make_plan(statement)
    return _plans[statement]


def _make_plan(statement: str) -> _Plan | None:
    parts = _split(statement)
    if parts is None or not all(_PREPARABLE.match(p) for p in parts):
        return None
    if _STATE_BY_PARAMETER.search(statement):
        return None
    made = []
    for part in parts:
        if "$" in part or "%%(" in part or "%s" in part.replace("%%", ""):
            return None  # dollar quoting, or positional parameters: left as text
        names: list[str] = []

        def number(match: re.Match[str], names: list[str] = names) -> str:
            if match.group(1) not in names:
                names.append(match.group(1))
            return f"${names.index(match.group(1)) + 1}"

        sql = _PARAM.sub(number, part).replace("%%", "%")
        name = "hitl_" + hashlib.sha1(sql.encode()).hexdigest()[:20]
        made.append(_Part(name, sql, tuple(names)))
    return _Plan(tuple(made))


def _split(statement: str) -> list[str] | None:
    """The statements of a ``;``-separated text (None when it holds a quoted ``;`` or a
    comment: those are left as text rather than parsed here)."""
    if "--" in statement or "/*" in statement:
        return None
    parts, start, quoted = [], 0, False
    for i, char in enumerate(statement):
        if char in "'\"":
            quoted = not quoted if char == "'" else quoted
            if char == '"':
                return None  # quoted identifiers: not needed by the hot path
        elif char == ";" and not quoted:
            parts.append(statement[start:i])
            start = i + 1
    if quoted:
        return None
    parts.append(statement[start:])
    return [p.strip() for p in parts if p.strip()]


_registry: Any = None


def _prepared_on(raw: Any) -> set[str]:
    """Names prepared on DBAPI connection ``raw`` (a new connection starts with none)."""
    global _registry
    if _registry is None:
        import weakref

        _registry = weakref.WeakKeyDictionary()
    found: set[str] | None = _registry.get(raw)
    if found is None:
        found = _registry[raw] = set()
    return found


def _prepare(raw: Any, plans: list[_Plan]) -> None:
    """PREPARE ``plans`` on ``raw``, outside any transaction (the driver is in autocommit
    mode between folded transactions). A part PostgreSQL refuses marks its statement as
    never to be prepared; a connection that fails otherwise is left to the pool."""
    prepared = _prepared_on(raw)
    try:
        cursor = raw.cursor()
    except psycopg2.Error:
        return  # the connection is gone: its next user finds out, as without this
    try:
        for plan in plans:
            for part in plan.parts:
                if part.name in prepared:
                    continue
                try:
                    stats.round_trips += 1
                    cursor.execute(f"PREPARE {part.name} AS {part.sql}")
                except psycopg2.errors.DuplicatePreparedStatement:
                    pass
                except (psycopg2.OperationalError, psycopg2.InterfaceError):
                    return  # the connection is gone (the transaction committed before)
                except psycopg2.Error as exc:
                    log.debug("not preparing %r: %r", part.sql[:80], exc)
                    with _plans_lock:
                        for statement, known in _plans.items():
                            if known is plan:
                                _plans[statement] = None
                    break
                prepared.add(part.name)
    finally:
        with contextlib.suppress(psycopg2.Error):
            cursor.close()


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
