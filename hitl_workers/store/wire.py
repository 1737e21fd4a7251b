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

**The raw cursor.** SQLAlchemy's execute path costs about 50 µs of Python per statement before
the driver sees it (docs/benchmarks.md), more than PostgreSQL spends running most of a
transition's statements. So the transitions' hot statements (store/executions.py,
store/dispatching.py, the writes of store/repo.py) go through :func:`fetch` and
:func:`defer`: in a folded transaction they are rendered and sent here on the transaction's
own DBAPI cursor, in the same messages, as the same text or ``EXECUTE`` as through SQLAlchemy,
and counted alike; a driver error goes through SQLAlchemy's own handling (the same exception
classes, a lost connection invalidated with its pool). Outside a folded transaction they run
through SQLAlchemy as any statement does. Everything else keeps using SQLAlchemy, through the
``do_execute`` hooks below.

**Autocommit without an isolation switch.** The driver must send no ``BEGIN`` of its own
inside a folded transaction. SQLAlchemy's ``isolation_level="AUTOCOMMIT"`` option does that at
the price of an isolation-level switch and its reset at check-in (about 60 µs a transaction);
flipping psycopg2's own ``autocommit`` flag for the transaction's length costs nothing and
leaves SQLAlchemy's view of the connection (READ COMMITTED, transactions of its own for
everyone else: migrations, :func:`hitl_workers.store.db.read_only`) as it was.
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
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine

log = logging.getLogger(__name__)

DEFER = "hitl_defer"
"""Execution option: this write needs no answer and may wait for the next statement."""


@dataclass
class WireStats:
    """What this process sent through folded transactions (the benchmark reads it)."""

    round_trips: int = 0
    statements: int = 0
    commits: int = 0


stats = WireStats()


@dataclass
class _Pending:
    raw: Any  # the psycopg2 connection
    cursor: Any  # the transaction's cursor (the raw path's; riders are rendered with it)
    prepared: set[str]  # the statements prepared on ``raw``
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


_open: dict[int, tuple[Connection, _Pending]] = {}
"""The folded transactions open in this process, by ``id()`` of their Connection (read per
statement: cheaper than the Connection's ``info``, and readable on an invalidated one)."""


def _current(conn: Connection) -> _Pending | None:
    entry = _open.get(id(conn))
    return entry[1] if entry is not None and entry[0] is conn else None


@contextmanager
def folded_transaction(conn: Connection) -> Iterator[Connection]:
    """One transaction on ``conn`` with ``BEGIN`` and deferred writes folded (see above).

    The driver runs in autocommit mode meanwhile, so it sends no ``BEGIN`` or ``COMMIT`` of
    its own; this sends them. Riders are told how it ended (a rolled-back transaction gives
    back what it took).
    """
    raw: Any = conn.connection.dbapi_connection
    raw.autocommit = True
    try:
        yield from _folded(conn, raw)
    finally:
        # A statement sent through SQLAlchemy began its own record of a transaction: end it
        # while the driver is still in autocommit mode, where its rollback sends nothing (and
        # the benchmark's counter, bench/cost.py, rightly counts nothing).
        if conn.in_transaction():
            with contextlib.suppress(sa_exc.SQLAlchemyError):  # never hide the body's error
                conn.rollback()
        if not raw.closed:
            with contextlib.suppress(psycopg2.Error):
                raw.autocommit = False


def _folded(conn: Connection, raw: Any) -> Iterator[Connection]:
    pending = _Pending(raw, raw.cursor(), _prepared_on(raw), [b"BEGIN"])
    taken: list[Rider] = []
    try:
        for rider in list(_riders):
            statement = rider.take()
            if statement is not None:
                taken.append(rider)
                pending.chunks.append(pending.cursor.mogrify(*statement))
    except BaseException:
        pending.cursor.close()
        for rider in taken:
            rider.confirm(False)
        raise
    key = id(conn)
    _open[key] = (conn, pending)
    committed = False
    try:
        yield conn
        if pending.begun or len(pending.chunks) > 1:
            _execute(conn, pending, "COMMIT", None)
            stats.commits += 1
        committed = True
    except BaseException:
        if pending.begun and not conn.invalidated:
            pending.chunks.clear()
            try:
                with raw.cursor() as cursor:  # the transaction's may be closed by an error
                    _send(cursor, pending, b"ROLLBACK")
            except Exception:
                conn.invalidate()  # the server or the socket is gone; the pool reconnects
        raise
    finally:
        _open.pop(key, None)
        with contextlib.suppress(psycopg2.Error):
            pending.cursor.close()
        for rider in taken:
            rider.confirm(committed)
    if pending.to_prepare and not conn.invalidated:
        _prepare(raw, pending.to_prepare)


def fetch(conn: Connection, statement: str, parameters: Mapping[str, Any] | None = None
          ) -> list[dict[str, Any]]:
    """The rows ``statement`` answers (pyformat parameters), each a dict by column name.

    In a folded transaction: sent at once on the raw cursor, with the writes deferred before
    it (module docstring); elsewhere through SQLAlchemy.
    """
    pending = _current(conn)
    if pending is None:
        result = conn.exec_driver_sql(statement, parameters)
        return [dict(row._mapping) for row in result] if result.returns_rows else []
    cursor = _execute(conn, pending, statement, parameters)
    if cursor.description is None:
        return []
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def fetch_one(conn: Connection, statement: str, parameters: Mapping[str, Any] | None = None
              ) -> dict[str, Any]:
    """:func:`fetch` of a statement that always answers exactly one row; otherwise
    SQLAlchemy's ``one()`` errors (``NoResultFound``, ``MultipleResultsFound``)."""
    rows = fetch(conn, statement, parameters)
    if len(rows) != 1:
        raise (sa_exc.NoResultFound("no row") if not rows
               else sa_exc.MultipleResultsFound("several rows"))
    return rows[0]


def defer(conn: Connection, statement: str, parameters: Mapping[str, Any] | None = None
          ) -> None:
    """A write nobody reads an answer from: in a folded transaction it waits for the next
    statement or ``COMMIT`` (as with the execution option :data:`DEFER`)."""
    pending = _current(conn)
    if pending is None:
        conn.exec_driver_sql(statement, parameters,
                             execution_options={DEFER: True})
        return
    cursor = _cursor(conn, pending)
    try:
        pending.chunks.append(_text(cursor, statement, parameters, pending))
    except psycopg2.Error as exc:  # a value psycopg2 cannot render
        conn._handle_dbapi_exception(exc, statement, parameters, cursor, None)


def _cursor(conn: Connection, pending: _Pending) -> Any:
    if conn.invalidated:
        # As SQLAlchemy does for a transaction whose connection was lost: never carry on
        # (reconnected) outside it.
        raise sa_exc.PendingRollbackError(
            "the transaction's connection was invalidated; roll it back first")
    if pending.cursor.closed:  # SQLAlchemy closes it after a statement's error
        pending.cursor = pending.raw.cursor()
    return pending.cursor


def _text(cursor: Any, statement: str, parameters: Mapping[str, Any] | None,
          pending: _Pending) -> bytes:
    if not parameters:
        return statement.encode()  # as SQLAlchemy sends it: no interpolation, no ``%%``
    return _rendered(cursor, statement, parameters, pending)


def _execute(conn: Connection, pending: _Pending, statement: str,
             parameters: Mapping[str, Any] | None) -> Any:
    """Send what is pending and ``statement`` in one message on the raw cursor."""
    cursor = _cursor(conn, pending)
    try:
        _send(cursor, pending, _text(cursor, statement, parameters, pending))
    except psycopg2.Error as exc:
        # SQLAlchemy's own handling: its exception classes (the tasks retry its
        # OperationalError, in_transaction its IntegrityError), a lost connection invalidated
        # and the pool with it.
        conn._handle_dbapi_exception(exc, statement, parameters, cursor, None)
    except Exception:
        raise
    except BaseException:
        conn.invalidate()  # interrupted mid-message: as SQLAlchemy treats an exit exception
        raise
    return cursor


def _pending(context: Any) -> _Pending | None:
    try:
        conn = context.root_connection
        return None if conn.invalidated else _current(conn)
    except AttributeError:
        return None


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
    execute: str  # ``EXECUTE name(%s, …)``: what is sent instead, rendered by psycopg2


@dataclass(frozen=True)
class _Plan:
    parts: tuple[_Part, ...]
    execute: str = ""  # every part's ``EXECUTE``, ``; ``-joined: rendered in one call
    params: tuple[str, ...] = ()  # the parameter names of ``execute``, in order


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
    prepared = pending.prepared
    if all(part.name in prepared for part in plan.parts):
        return bytes(cursor.mogrify(plan.execute, [parameters[p] for p in plan.params]))
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
        execute = f"EXECUTE {name}({', '.join(['%s'] * len(names))})" if names else \
            f"EXECUTE {name}"
        made.append(_Part(name, sql, tuple(names), execute))
    return _Plan(tuple(made), "; ".join(part.execute for part in made),
                 tuple(p for part in made for p in part.params))


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
