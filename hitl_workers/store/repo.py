"""The repository: every read and write the use cases make, as small SQL functions.

All functions take an open :class:`Connection` inside a transaction; the caller owns the
transaction. Row locks (``FOR UPDATE``) are PostgreSQL's; on SQLite every write transaction
starts with ``BEGIN IMMEDIATE`` (see :mod:`hitl_workers.store.db`), which serializes writers,
so the same code is correct on both.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Row

from hitl_workers.domain.eligibility import AgentView
from hitl_workers.store import wire
from hitl_workers.store.tables import (
    UTCDateTime,
    agent_events,
    agent_rule_groups,
    agents,
    audit_events,
    conversations,
    dead_letters,
    executions,
    heartbeats,
    offers,
    outbox,
    timers,
)

_DEFER = {wire.DEFER: True}
"""A write nobody reads an answer from: on PostgreSQL it travels with the next statement."""


def _insert(conn: Connection, table: sa.Table) -> Any:
    """A dialect-specific INSERT that supports ON CONFLICT."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


_PREBUILT: dict[tuple[str, Any], Any] = {}


def _prebuilt(conn: Connection, key: Any, build: Callable[[Connection], Any]) -> Any:
    """A statement built once per dialect and reused with bound parameters.

    The step's hot path runs the same few statements for every execution; building each
    with fresh literals costs more CPU than PostgreSQL spends running it.
    """
    cache_key = (conn.dialect.name, key)
    statement = _PREBUILT.get(cache_key)
    if statement is None:
        statement = _PREBUILT[cache_key] = build(conn)
    return statement


# --- executions -----------------------------------------------------------------------------

def lock_execution(conn: Connection, execution_id: str, *, skip_locked: bool = False
                   ) -> Row[Any] | None:
    """The execution row joined with its conversation's tags, locked for this transaction.

    With ``skip_locked`` a row that another transaction holds is reported as None: the
    reconciler uses that so two beats never wait on each other (the holder will finish it).
    """
    query = _prebuilt(conn, ("lock_execution", skip_locked), lambda _: (
        sa.select(executions, conversations.c.tags,
                  conversations.c.status.label("conversation_status"),
                  conversations.c.claimed_by)
        .select_from(executions.outerjoin(
            conversations, conversations.c.conversation_id == executions.c.conversation_id))
        .where(executions.c.execution_id == sa.bindparam("b_execution_id"))
        .with_for_update(of=executions, skip_locked=skip_locked)
    ))
    return conn.execute(query, {"b_execution_id": execution_id}).first()


def waiting_execution_id(conn: Connection, conversation_id: str) -> str | None:
    return conn.execute(
        sa.select(executions.c.execution_id).where(
            executions.c.conversation_id == conversation_id, executions.c.state == "waiting")
    ).scalar()


def insert_execution(conn: Connection, values: Mapping[str, Any]) -> bool:
    """Insert unless the execution id exists; True when this call created it."""
    stmt = _prebuilt(conn, ("insert_execution", tuple(sorted(values))), lambda c: (
        _insert(c, executions)
        .on_conflict_do_nothing(index_elements=["execution_id"])
        .returning(executions.c.execution_id)))
    return conn.execute(stmt, dict(values)).first() is not None


def end_execution(conn: Connection, execution_id: str, *, state: str, exit: str | None,
                  merge_field: Mapping[str, Any] | None, now: datetime) -> bool:
    """The guarded transition out of ``waiting``; True when this call made it.

    The caller holds the row lock, so this cannot lose; the ``state = 'waiting'`` guard is the
    database's own word that no second exit is ever written even if a caller forgot the lock.
    """
    stmt = _prebuilt(conn, "end_execution", lambda _: (
        sa.update(executions)
        .where(executions.c.execution_id == sa.bindparam("b_execution_id"),
               executions.c.state == "waiting")
        .values(state=sa.bindparam("b_state"), exit=sa.bindparam("b_exit"),
                merge_field=sa.bindparam("b_merge_field", type_=executions.c.merge_field.type),
                ended_at=sa.bindparam("b_ended_at", type_=UTCDateTime))
        .returning(executions.c.execution_id)))
    return conn.execute(stmt, {"b_execution_id": execution_id, "b_state": state,
                               "b_exit": exit, "b_merge_field": merge_field,
                               "b_ended_at": now}).first() is not None


def existing_or_waiting(conn: Connection, execution_id: str, conversation_id: str
                        ) -> tuple[Row[Any] | None, str | None]:
    """In one query: this execution if it exists, and the conversation's waiting execution."""
    query = _prebuilt(conn, "existing_or_waiting", lambda _: (
        sa.select(executions.c.execution_id, executions.c.state, executions.c.exit)
        .where(sa.or_(executions.c.execution_id == sa.bindparam("b_execution_id"),
                      sa.and_(executions.c.conversation_id == sa.bindparam("b_conversation_id"),
                              executions.c.state == "waiting")))))
    rows = conn.execute(query, {"b_execution_id": execution_id,
                                "b_conversation_id": conversation_id}).all()
    mine = next((r for r in rows if r.execution_id == execution_id), None)
    waiting = next((r.execution_id for r in rows if r.execution_id != execution_id), None)
    return mine, waiting


def get_execution(conn: Connection, execution_id: str) -> Row[Any] | None:
    return conn.execute(
        sa.select(executions).where(executions.c.execution_id == execution_id)).first()


# --- conversations --------------------------------------------------------------------------

def lock_conversation(conn: Connection, conversation_id: str, now: datetime) -> Row[Any]:
    """Create the conversation if new, and lock it: requests for one conversation queue here.

    One statement: an upsert takes the row lock in PostgreSQL whether it inserts or updates,
    and returns the row as it stands (SQLite's BEGIN IMMEDIATE already serializes writers).
    """
    def build(c: Connection) -> Any:
        stmt = _insert(c, conversations)
        return stmt.on_conflict_do_update(
            index_elements=["conversation_id"], set_={"updated_at": stmt.excluded.updated_at}
        ).returning(*conversations.c)

    stmt = _prebuilt(conn, "lock_conversation", build)
    return conn.execute(stmt, {"conversation_id": conversation_id, "status": "open", "tags": [],
                               "contact": None, "claimed_by": [], "updated_at": now}).one()


_CONVERSATION_JSON = frozenset({"tags", "contact", "claimed_by"})
_UPDATE_CONVERSATION: dict[tuple[str, ...], str] = {}


def update_conversation(conn: Connection, conversation_id: str, now: datetime,
                        **values: Any) -> None:
    if conn.dialect.name == "postgresql":
        # On the raw path (store/wire.py); the JSON columns' values as SQLAlchemy's JSON type
        # renders them (``json.dumps``, None as JSON ``null``).
        columns = tuple(sorted(values))
        sql = _UPDATE_CONVERSATION.get(columns)
        if sql is None:
            unknown = [c for c in columns if c not in conversations.c
                       or c in ("conversation_id", "updated_at")]
            if unknown:
                raise KeyError(f"not columns of conversations to set: {unknown}")
            sets = "".join(f", {c} = %({c})s" for c in columns)
            sql = _UPDATE_CONVERSATION[columns] = (
                f"UPDATE conversations SET updated_at = %(updated_at)s{sets} "
                "WHERE conversation_id = %(conversation_id)s")
        wire.defer(conn, sql, {
            **{c: json.dumps(v) if c in _CONVERSATION_JSON else v for c, v in values.items()},
            "updated_at": now, "conversation_id": conversation_id})
        return
    # The SET list is the parameters' keys (besides the WHERE's own ``b_`` parameter).
    stmt = _prebuilt(conn, "update_conversation", lambda _: (
        sa.update(conversations)
        .where(conversations.c.conversation_id == sa.bindparam("b_conversation_id"))))
    conn.execute(stmt, {"b_conversation_id": conversation_id, "updated_at": now, **values},
                 execution_options=_DEFER)


_ADD_CLAIMER = """\
UPDATE conversations SET status = 'claimed', updated_at = %(now)s,
       claimed_by = CASE WHEN claimed_by @> jsonb_build_array(CAST(%(agent)s AS text))
                         THEN claimed_by
                         ELSE claimed_by || jsonb_build_array(CAST(%(agent)s AS text)) END
 WHERE conversation_id = %(conversation_id)s"""


def add_claimer(conn: Connection, conversation_id: str, claimed_by: Sequence[str],
                agent_id: str, now: datetime) -> None:
    """Mark the conversation claimed by ``agent_id`` too. ``claimed_by`` is the list as read
    (SQLite writes it back with the agent added). On PostgreSQL the agent is added to the list
    *as it is when the row is written*: a release committed since the claim read it
    (``hitl.release`` locks only the conversation) must not be undone."""
    if conn.dialect.name == "postgresql":
        wire.defer(conn, _ADD_CLAIMER, {"now": now, "agent": agent_id,
                                        "conversation_id": conversation_id})
        return
    after = list(claimed_by)
    if agent_id not in after:
        after.append(agent_id)
    update_conversation(conn, conversation_id, now, status="claimed", claimed_by=after)


def release_conversation(conn: Connection, conversation_id: str, agent_id: str | None,
                         now: datetime) -> tuple[list[str], list[str]] | None:
    """Remove ``agent_id`` (None: everyone) from the conversation's ``claimed_by``; return
    what it held before and holds now, or None when there is no such conversation. The row
    lock serializes this with a claim's write of ``claimed_by`` (no update is lost)."""
    found = conn.execute(sa.select(conversations.c.claimed_by)
                         .where(conversations.c.conversation_id == conversation_id)
                         .with_for_update()).first()
    if found is None:
        return None
    before = list(found.claimed_by or ())
    after = [] if agent_id is None else [a for a in before if a != agent_id]
    if after != before:
        update_conversation(conn, conversation_id, now, claimed_by=after)
    return before, after


def get_conversation(conn: Connection, conversation_id: str) -> Row[Any] | None:
    return conn.execute(sa.select(conversations).where(
        conversations.c.conversation_id == conversation_id)).first()


# --- agents ---------------------------------------------------------------------------------

def _agent_view(row: Row[Any], load: int = 0) -> AgentView:
    return AgentView(row.agent_id, row.status, tuple(tuple(g) for g in row.rule_groups),
                     row.capacity, load)


def get_agent(conn: Connection, agent_id: str) -> AgentView | None:
    query = _prebuilt(conn, "get_agent", lambda _: (
        sa.select(agents).where(agents.c.agent_id == sa.bindparam("b_agent_id"))))
    row = conn.execute(query, {"b_agent_id": agent_id}).first()
    return _agent_view(row) if row else None


def all_agents(conn: Connection, *, except_conversation: str | None = None) -> list[AgentView]:
    """The whole directory (SQLite's dispatch), each agent with its load (§9)."""
    found = list(conn.execute(sa.select(agents).order_by(agents.c.agent_id)))
    load = loads(conn, except_conversation) if any(r.capacity for r in found) else {}
    return [_agent_view(r, load.get(r.agent_id, 0)) for r in found]


def loads(conn: Connection, except_conversation: str | None = None) -> dict[str, int]:
    """Agent id → how many conversations (other than ``except_conversation``) it holds claimed.

    Portable and whole-table: for SQLite's small directories. PostgreSQL counts one agent's
    load with the GIN index on ``claimed_by`` (store/executions.py, store/dispatching.py)."""
    counts: dict[str, int] = {}
    for conversation_id, claimed_by in conn.execute(
            sa.select(conversations.c.conversation_id, conversations.c.claimed_by)):
        if conversation_id == except_conversation:
            continue
        for agent_id in set(claimed_by or ()):
            counts[agent_id] = counts.get(agent_id, 0) + 1
    return counts


def upsert_agent(conn: Connection, *, agent_id: str, name: str, status: str,
                 rule_groups: list[list[str]], now: datetime,
                 capacity: int | None = None) -> None:
    stmt = _insert(conn, agents).values(
        agent_id=agent_id, name=name, status=status, rule_groups=rule_groups, updated_at=now,
        capacity=capacity)
    stmt = stmt.on_conflict_do_update(
        index_elements=["agent_id"],
        set_={"name": stmt.excluded.name, "status": stmt.excluded.status,
              "rule_groups": stmt.excluded.rule_groups, "updated_at": stmt.excluded.updated_at,
              "capacity": stmt.excluded.capacity},
    )
    conn.execute(stmt)
    # The index of who sees what (store/tables.py agent_rule_groups) follows the agent.
    conn.execute(sa.delete(agent_rule_groups).where(agent_rule_groups.c.agent_id == agent_id))
    if rule_groups:
        conn.execute(agent_rule_groups.insert().inline(), [
            {"agent_id": agent_id, "position": i, "tags": list(group),
             "key_tag": _rarest_tag(conn, group)}
            for i, group in enumerate(rule_groups)])


_RAREST = """SELECT t FROM unnest(%(tags)s::varchar[]) AS t
ORDER BY (SELECT count(*) FROM agent_rule_groups g WHERE g.tags @> ARRAY[t]::varchar[]), t
LIMIT 1"""


def _rarest_tag(conn: Connection, group: Sequence[str]) -> str:
    """The key tag of a rule group (store/tables.py): its tag in the fewest groups now."""
    if not group:
        return ""
    if conn.dialect.name != "postgresql":
        return min(group)  # SQLite reads the directory whole; any tag of the group is correct
    return str(conn.exec_driver_sql(_RAREST, {"tags": list(group)}).scalar_one())


def set_agent_status(conn: Connection, agent_id: str, status: str, now: datetime) -> bool:
    result = conn.execute(
        sa.update(agents).where(agents.c.agent_id == agent_id)
        .values(status=status, updated_at=now).returning(agents.c.agent_id))
    return result.first() is not None


def delete_agent(conn: Connection, agent_id: str) -> None:
    conn.execute(sa.delete(agents).where(agents.c.agent_id == agent_id))


def executions_offered_to(conn: Connection, agent_id: str) -> list[str]:
    """Waiting executions with a live offer to ``agent_id``."""
    return list(conn.execute(
        sa.select(offers.c.execution_id)
        .join(executions, executions.c.execution_id == offers.c.execution_id)
        .where(offers.c.agent_id == agent_id, executions.c.state == "waiting",
               offers.c.status != "withdrawn")
        .order_by(offers.c.execution_id)
    ).scalars())


def executions_open_to(conn: Connection, agent_id: str) -> list[str]:
    """Waiting executions with an open (``offered``) offer to ``agent_id``, or whose
    sequential offer it holds (a holder who closed its popup still holds it, §9)."""
    return list(conn.execute(
        sa.select(offers.c.execution_id)
        .join(executions, executions.c.execution_id == offers.c.execution_id)
        .where(offers.c.agent_id == agent_id, executions.c.state == "waiting",
               sa.or_(offers.c.status == "offered",
                      sa.and_(offers.c.round.is_not(None), offers.c.status == "closed")))
        .order_by(offers.c.execution_id)
    ).scalars())


# --- offers, timers -------------------------------------------------------------------------

def insert_offers(conn: Connection, execution_id: str, agent_ids: Sequence[str],
                  now: datetime) -> None:
    if not agent_ids:
        return
    if conn.dialect.name == "postgresql":
        # One INSERT however many agents, their ids one array parameter (no per-row SQL to
        # build); no answer needed, so it travels with the next statement or COMMIT.
        wire.defer(
            conn,
            "INSERT INTO offers (execution_id, agent_id, status, updated_at) "
            "SELECT %(execution_id)s, a, 'offered', %(now)s "
            "FROM unnest(%(agents)s::varchar[]) AS a",
            {"execution_id": execution_id, "agents": list(agent_ids), "now": now})
        return
    conn.execute(offers.insert().inline(), [
        {"execution_id": execution_id, "agent_id": a, "status": "offered", "updated_at": now}
        for a in agent_ids])


_SET_OFFER = """\
INSERT INTO offers (execution_id, agent_id, status, updated_at)
VALUES (%(execution_id)s, %(agent_id)s, %(status)s, %(now)s)
ON CONFLICT (execution_id, agent_id) DO UPDATE
   SET status = excluded.status, updated_at = excluded.updated_at
 WHERE offers.status != excluded.status"""


def set_offer(conn: Connection, execution_id: str, agent_id: str, status: str,
              now: datetime) -> None:
    if conn.dialect.name == "postgresql":
        wire.defer(conn, _SET_OFFER, {"execution_id": execution_id, "agent_id": agent_id,
                                      "status": status, "now": now})
        return
    stmt = _insert(conn, offers).inline().values(
        execution_id=execution_id, agent_id=agent_id, status=status, updated_at=now)
    conn.execute(stmt.on_conflict_do_update(
        index_elements=["execution_id", "agent_id"],
        set_={"status": stmt.excluded.status, "updated_at": stmt.excluded.updated_at},
        # A repeat of the same change (an agent rejecting twice) leaves the row alone:
        # ``updated_at`` orders ``rejectedBy``, so a repeated reject must not move the agent
        # behind those who rejected after its first one.
        where=offers.c.status != stmt.excluded.status), execution_options=_DEFER)


def insert_timers(conn: Connection, execution_id: str,
                  deadlines: Iterable[tuple[str, datetime, datetime | None]]) -> None:
    deadlines = list(deadlines)
    if deadlines and conn.dialect.name == "postgresql":
        values = ", ".join(f"(%(execution_id)s, %(kind_{i})s, %(due_at_{i})s, 'pending', "
                           f"%(armed_at_{i})s)" for i in range(len(deadlines)))
        parameters: dict[str, Any] = {"execution_id": execution_id}
        for i, (kind, due_at, armed_at) in enumerate(deadlines):
            parameters.update({f"kind_{i}": kind, f"due_at_{i}": due_at,
                               f"armed_at_{i}": armed_at})
        wire.defer(conn, "INSERT INTO timers (execution_id, kind, due_at, state, armed_at) "
                         f"VALUES {values}", parameters)
    elif deadlines:
        conn.execute(timers.insert().inline(), [
            {"execution_id": execution_id, "kind": kind, "due_at": due_at, "state": "pending",
             "armed_at": armed_at} for kind, due_at, armed_at in deadlines],
            execution_options=_DEFER)


_FINISH_TIMERS = """\
UPDATE timers SET state = CASE WHEN kind = %(fired)s THEN 'fired' ELSE 'cancelled' END,
                  fired_at = CASE WHEN kind = %(fired)s THEN CAST(%(now)s AS timestamptz) END
 WHERE execution_id = %(execution_id)s AND state != 'fired' AND state != 'cancelled'"""


def finish_timers_later(conn: Connection, execution_id: str, *, fired: str | None,
                        now: datetime) -> None:
    """:func:`finish_timers` without its answer, so it can travel with the next statement
    (the caller knows from its view which timers were pending).

    "Pending" is written as "neither fired nor cancelled" (the only other states, see the
    check constraint) on purpose: ``state = 'pending'`` would let the planner read the
    partial index ``ix_timers_pending_due`` and filter every pending timer of every step by
    execution id (while 2,000 deadlines were pending, that scan was most of a fired
    deadline's cost in PostgreSQL). This way only the primary key (execution id, kind) can
    find the execution's at most three rows.

    On PostgreSQL the time is cast: a parameter that is only a ``CASE`` result has no type
    PostgreSQL could prepare the statement with (store/wire.py)."""
    if conn.dialect.name == "postgresql":
        wire.defer(conn, _FINISH_TIMERS, {"execution_id": execution_id, "fired": fired or "",
                                          "now": now})
        return

    def build(_: Connection) -> Any:
        is_fired = timers.c.kind == sa.bindparam("b_fired")
        return (sa.update(timers)
                .where(timers.c.execution_id == sa.bindparam("b_execution_id"),
                       timers.c.state != "fired", timers.c.state != "cancelled")
                .values(state=sa.case((is_fired, "fired"), else_="cancelled"),
                        fired_at=sa.case((is_fired, sa.bindparam("b_now", type_=UTCDateTime)),
                                         else_=None)))

    conn.execute(_prebuilt(conn, "finish_timers_later", build), {
        "b_execution_id": execution_id, "b_fired": fired or "", "b_now": now},
        execution_options=_DEFER)


def queue_messages_cte(only_if: str) -> str:
    """The ``queued`` part of a transition's one write: insert the outbox rows of
    ``%(messages)s`` (a JSON array) when the CTE ``only_if`` returned a row, and answer their
    ids by dedupe key (``SELECT … FROM queued``). A message whose key exists is left alone."""
    return f"""queued AS (
    INSERT INTO outbox (dedupe_key, kind, execution_id, payload, created_at, attempts)
    SELECT m.dedupe_key, m.kind, m.execution_id, m.payload, %(now)s, 0
      FROM json_to_recordset(%(messages)s::json)
           AS m(dedupe_key text, kind text, execution_id text, payload json)
     WHERE EXISTS (SELECT 1 FROM {only_if})
    ON CONFLICT (dedupe_key) DO NOTHING
    RETURNING id, dedupe_key
)"""


AuditEntry = tuple[str, str | None, Mapping[str, Any] | None]
"""An audit event of a transition: (kind, agent id, detail)."""


def audit_rows(entries: Sequence[AuditEntry]) -> str:
    """``entries`` as the JSON array :data:`AUDIT_CTE` inserts (detail as SQLAlchemy's JSON
    type writes it: None as JSON ``null``)."""
    return json.dumps([[kind, agent_id, dict(detail) if detail else None]
                       for kind, agent_id, detail in entries])


AUDIT_CTE = """audited AS (
    INSERT INTO audit_events (execution_id, at, kind, agent_id, detail)
    SELECT %(execution_id)s, %(now)s, e.v->>0, e.v->>1, CAST(e.v->2 AS jsonb)
      FROM json_array_elements(CAST(%(audits)s AS json)) WITH ORDINALITY AS e(v, n)
     ORDER BY e.n
)"""
"""The audit rows of a transition's one write, in their order (``ORDER BY`` the array's: the
ids, which order the trail, are drawn in it)."""

_OFFER_CTE = """offer AS (
    INSERT INTO offers (execution_id, agent_id, status, updated_at)
    SELECT %(execution_id)s, CAST(%(offer_agent)s AS text), CAST(%(offer_status)s AS text),
           %(now)s
     WHERE CAST(%(offer_agent)s AS text) IS NOT NULL
    ON CONFLICT (execution_id, agent_id) DO UPDATE
       SET status = excluded.status, updated_at = excluded.updated_at
     WHERE offers.status != excluded.status
)"""
""":data:`_SET_OFFER` (the decision's ``offer_change``; no row when there is none)."""

StoredAnswer = tuple[str, str, str, str | None, str | None, Mapping[str, Any]]
"""An agent event's answer to store (:func:`store_event_result`): (agent id, event id, action,
execution id, conversation id, result)."""

_EVENT_CTE = """answered AS (
    INSERT INTO agent_events (agent_id, event_id, action, execution_id, conversation_id,
                              result, created_at)
    SELECT CAST(%(event_agent)s AS text), CAST(%(event_id)s AS text),
           CAST(%(event_action)s AS text), CAST(%(event_execution)s AS text),
           CAST(%(event_conversation)s AS text), CAST(%(event_result)s AS json), %(now)s
     WHERE CAST(%(event_id)s AS text) IS NOT NULL
)"""
""":data:`_STORE_EVENT` (no row without an answer to store). A concurrent twin makes the
statement fail with IntegrityError, as the INSERT on its own did."""


_NO_ANSWER: Mapping[str, Any] = dict.fromkeys((
    "event_agent", "event_id", "event_action", "event_execution", "event_conversation",
    "event_result"))


def _answer_parameters(answer: StoredAnswer | None) -> Mapping[str, Any]:
    if answer is None:
        return _NO_ANSWER
    agent_id, event_id, action, execution_id, conversation_id, result = answer
    return {"event_agent": agent_id, "event_id": event_id, "event_action": action,
            "event_execution": execution_id, "event_conversation": conversation_id,
            "event_result": json.dumps(dict(result))}


def _store_answer(conn: Connection, answer: StoredAnswer | None, now: datetime) -> None:
    if answer is not None:
        agent_id, event_id, action, execution_id, conversation_id, result = answer
        store_event_result(conn, agent_id=agent_id, event_id=event_id, action=action,
                           execution_id=execution_id, result=result, now=now,
                           conversation_id=conversation_id)

# One statement for everything an ending transition writes. Each part touches rows of its own
# table (no row is written twice in one statement, where PostgreSQL would keep only one of the
# changes), and every row lock it waits for is one the statements it replaces waited for: the
# execution's is already ours (the read), the timers and offers are the execution's (only
# ever written under its lock), the conversation's is waited for as before (a release
# committed meanwhile is re-read: ``claimed_by`` is extended as it stands then), and the idle
# stamp skips a locked agent row (SKIP LOCKED, see store/sequential.py ``_stamp``).
_END_SQL = """WITH ended AS (
    UPDATE executions SET state = %(state)s, exit = %(exit)s,
                          merge_field = %(merge_field)s::jsonb, ended_at = %(now)s
     WHERE execution_id = %(execution_id)s AND state = 'waiting'
    RETURNING execution_id
), """ + queue_messages_cte("ended") + """, """ + _OFFER_CTE + """, finished AS (
    UPDATE timers SET state = CASE WHEN kind = %(fired)s THEN 'fired' ELSE 'cancelled' END,
                      fired_at = CASE WHEN kind = %(fired)s THEN CAST(%(now)s AS timestamptz)
                                 END
     WHERE execution_id = %(execution_id)s AND state != 'fired' AND state != 'cancelled'
), conversation AS (
    UPDATE conversations SET status = %(conversation_status)s, updated_at = %(now)s,
           claimed_by = CASE WHEN CAST(%(claimer)s AS text) IS NULL
                               OR claimed_by @> jsonb_build_array(CAST(%(claimer)s AS text))
                             THEN claimed_by
                             ELSE claimed_by || jsonb_build_array(CAST(%(claimer)s AS text))
                        END
     WHERE conversation_id = %(conversation_id)s
), stamped AS (
    UPDATE agents SET last_claimed_at = %(now)s WHERE agent_id = (
        SELECT agent_id FROM agents WHERE agent_id = CAST(%(claimer)s AS text)
           FOR UPDATE SKIP LOCKED)
), """ + AUDIT_CTE + ", " + _EVENT_CTE + """
SELECT (SELECT count(*) FROM ended) AS ended,
       (SELECT json_agg(json_build_array(dedupe_key, id)) FROM queued) AS queued"""


def end_with_messages(conn: Connection, execution_id: str, *, state: str, exit: str | None,
                      merge_field: Mapping[str, Any] | None, now: datetime,
                      messages: Sequence[Mapping[str, Any]],
                      offer: tuple[str, str] | None = None, fired: str | None = None,
                      conversation: tuple[str, str, Sequence[str]] | None = None,
                      claimer: str | None = None, audits: Sequence[AuditEntry] = (),
                      answer: StoredAnswer | None = None) -> tuple[bool, dict[str, int]]:
    """The guarded transition out of ``waiting`` and everything else it writes, in one
    statement on PostgreSQL:

    - its outbox ``messages``, queued only if the guarded update happened (``WHERE EXISTS
      (SELECT 1 FROM ended)``; the caller holds the row lock, so it always does unless
      something is broken);
    - ``offer``: (agent id, status) set as :func:`set_offer` does;
    - its timers finished, ``fired`` (if given) fired and the others cancelled
      (:func:`finish_timers_later`);
    - ``conversation``: (conversation id, status to set, ``claimed_by`` as read) — with
      ``claimer``, the agent added to ``claimed_by`` as :func:`add_claimer` does, and its
      idle stamp (store/sequential.py ``stamp_claimed``);
    - its ``audits``, in order;
    - ``answer``: the agent event's answer, stored as :func:`store_event_result` does.

    Returns (whether this call ended it, dedupe key → id of the rows queued). SQLite runs the
    same writes one statement each.
    """
    if conn.dialect.name != "postgresql":
        return _end_portable(conn, execution_id, state=state, exit=exit,
                             merge_field=merge_field, now=now, messages=messages, offer=offer,
                             fired=fired, conversation=conversation, claimer=claimer,
                             audits=audits, answer=answer)
    row = wire.fetch_one(conn, _END_SQL, {
        "execution_id": execution_id, "state": state, "exit": exit,
        "merge_field": json.dumps(merge_field) if merge_field is not None else None,
        "now": now, "messages": json.dumps([
            {"dedupe_key": m["dedupe_key"], "kind": m["kind"],
             "execution_id": m["execution_id"], "payload": m["payload"]}
            for m in messages]),
        "offer_agent": offer[0] if offer is not None else None,
        "offer_status": offer[1] if offer is not None else None,
        "fired": fired or "",
        "conversation_id": conversation[0] if conversation is not None else None,
        "conversation_status": conversation[1] if conversation is not None else None,
        "claimer": claimer if conversation is not None else None,
        "audits": audit_rows(audits), **_answer_parameters(answer)})
    return bool(row["ended"]), dict(row["queued"] or ())


def _end_portable(conn: Connection, execution_id: str, *, state: str, exit: str | None,
                  merge_field: Mapping[str, Any] | None, now: datetime,
                  messages: Sequence[Mapping[str, Any]], offer: tuple[str, str] | None,
                  fired: str | None, conversation: tuple[str, str, Sequence[str]] | None,
                  claimer: str | None, audits: Sequence[AuditEntry],
                  answer: StoredAnswer | None) -> tuple[bool, dict[str, int]]:
    # SQLite (BEGIN IMMEDIATE: one writer at a time): the same writes, in the same order.
    from hitl_workers.store import sequential

    if offer is not None:
        set_offer(conn, execution_id, offer[0], offer[1], now)
    finish_timers_later(conn, execution_id, fired=fired, now=now)
    if conversation is not None:
        conversation_id, status, claimed_by = conversation
        if claimer:
            add_claimer(conn, conversation_id, claimed_by, claimer, now)
            sequential.stamp_claimed(conn, claimer, now)
        else:
            update_conversation(conn, conversation_id, now, status=status)
    if not end_execution(conn, execution_id, state=state, exit=exit,
                         merge_field=merge_field, now=now):
        return False, {}
    ids = add_outbox_many(conn, messages, now)
    audit_many(conn, execution_id, now, audits)
    _store_answer(conn, answer, now)
    return True, ids


_CHANGE_SQL = "WITH " + _OFFER_CTE + ", " + AUDIT_CTE + ", " + _EVENT_CTE + "\nSELECT 1"


def write_changes(conn: Connection, execution_id: str, now: datetime, *,
                  offer: tuple[str, str] | None = None, audits: Sequence[AuditEntry] = (),
                  answer: StoredAnswer | None = None) -> None:
    """What a transition that does not end the execution writes besides its sequential part:
    ``offer`` (agent id, status) as :func:`set_offer` sets it, its ``audits`` and the agent
    event's ``answer`` (:func:`store_event_result`), in one statement that needs no answer
    (on PostgreSQL it travels with the next statement or ``COMMIT``). Nothing is sent when
    there is nothing to write."""
    if offer is None and not audits and answer is None:
        return
    if conn.dialect.name != "postgresql":
        if offer is not None:
            set_offer(conn, execution_id, offer[0], offer[1], now)
        audit_many(conn, execution_id, now, audits)
        _store_answer(conn, answer, now)
        return
    wire.defer(conn, _CHANGE_SQL, {
        "execution_id": execution_id, "now": now,
        "offer_agent": offer[0] if offer is not None else None,
        "offer_status": offer[1] if offer is not None else None,
        "audits": audit_rows(audits), **_answer_parameters(answer)})


def lock_overdue(conn: Connection, now: datetime, limit: int) -> Sequence[Row[Any]]:
    """Waiting executions with a pending deadline due by ``now``, earliest deadline first,
    each locked for this transaction; at most one row per execution, for its earliest
    overdue deadline (columns of :func:`lock_execution`, plus ``timer_kind``).

    ``SKIP LOCKED``: an execution another transaction holds (a claim, a wake-up, a second
    reconciler) is left to it, so reconcilers running side by side share the backlog and
    never wait for each other. Like :func:`lock_execution`, this locks the execution row
    first; its timer rows are written only afterwards, so the lock order of claims
    (execution, then timers) is kept and no deadlock can form.
    """
    rows = conn.execute(
        sa.select(executions, conversations.c.tags,
                  conversations.c.status.label("conversation_status"),
                  conversations.c.claimed_by, timers.c.kind.label("timer_kind"))
        .select_from(timers.join(
            executions, executions.c.execution_id == timers.c.execution_id).outerjoin(
            conversations, conversations.c.conversation_id == executions.c.conversation_id))
        .where(timers.c.state == "pending", timers.c.due_at <= now,
               executions.c.state == "waiting")
        # On a tie the countdown ("countdown" < "timeout") wins, as at dispatch, where the
        # earliest deadline is armed and the countdown comes first.
        .order_by(timers.c.due_at, timers.c.execution_id, timers.c.kind).limit(limit)
        .with_for_update(of=executions, skip_locked=True)
    ).all()
    seen: set[str] = set()
    earliest = []
    for row in rows:  # both deadlines overdue: the earlier one is the one that fires
        if row.execution_id not in seen:
            seen.add(row.execution_id)
            earliest.append(row)
    return earliest


def claim_timers_to_arm(conn: Connection, now: datetime, until: datetime, limit: int
                        ) -> list[tuple[str, str, datetime]]:
    """Pending, never-armed timers due before ``until``, marked armed by this transaction.

    ``SKIP LOCKED``: a second reconciler running at the same moment takes other rows.
    """
    rows = conn.execute(
        sa.select(timers.c.execution_id, timers.c.kind, timers.c.due_at)
        .where(timers.c.state == "pending", timers.c.armed_at.is_(None),
               timers.c.due_at <= until)
        .order_by(timers.c.due_at).limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    if rows:
        # One UPDATE for the batch (the rows are locked by the SELECT above); no answer
        # needed, so on PostgreSQL it travels with the next statement or COMMIT.
        conn.execute(sa.update(timers).where(
            sa.tuple_(timers.c.execution_id, timers.c.kind).in_(
                [(r.execution_id, r.kind) for r in rows])
        ).values(armed_at=now), execution_options=_DEFER)
    return [(r.execution_id, r.kind, r.due_at) for r in rows]


# --- agent events (idempotency) -------------------------------------------------------------

_STORE_EVENT = """\
INSERT INTO agent_events (agent_id, event_id, action, execution_id, conversation_id, result,
                          created_at)
VALUES (%(agent_id)s, %(event_id)s, %(action)s, %(execution_id)s, %(conversation_id)s,
        %(result)s, %(now)s)"""


def store_event_result(conn: Connection, *, agent_id: str, event_id: str, action: str,
                       execution_id: str | None, result: Mapping[str, Any],
                       now: datetime, conversation_id: str | None = None) -> None:
    """Record the answer to a client event. A concurrent twin makes the transaction fail
    with IntegrityError (at this statement, or at COMMIT when it travelled with it)."""
    if conn.dialect.name == "postgresql":
        wire.defer(conn, _STORE_EVENT, {
            "agent_id": agent_id, "event_id": event_id, "action": action,
            "execution_id": execution_id, "conversation_id": conversation_id,
            "result": json.dumps(dict(result)), "now": now})
        return
    conn.execute(agent_events.insert().inline().values(
        agent_id=agent_id, event_id=event_id, action=action, execution_id=execution_id,
        conversation_id=conversation_id, result=dict(result), created_at=now),
        execution_options=_DEFER)


# --- audit, outbox, dead letters, heartbeats ------------------------------------------------

def audit(conn: Connection, execution_id: str, kind: str, now: datetime, *,
          agent_id: str | None = None, detail: Mapping[str, Any] | None = None) -> None:
    conn.execute(audit_events.insert().values(
        execution_id=execution_id, at=now, kind=kind, agent_id=agent_id,
        detail=dict(detail) if detail else None))


_AUDIT_MANY: dict[int, str] = {}


def audit_many(conn: Connection, execution_id: str, now: datetime,
               entries: Sequence[tuple[str, str | None, Mapping[str, Any] | None]]) -> None:
    """Several audit events of one transaction in one statement: (kind, agent id, detail)."""
    if entries and conn.dialect.name == "postgresql":
        # One multi-row INSERT, as SQLAlchemy's "insertmanyvalues" sends it (detail as its JSON
        # type renders it: None as JSON ``null``), on the raw path (store/wire.py).
        sql = _AUDIT_MANY.get(len(entries))
        if sql is None:
            sql = _AUDIT_MANY[len(entries)] = (
                "INSERT INTO audit_events (execution_id, at, kind, agent_id, detail) VALUES "
                + ", ".join(f"(%(execution_id)s, %(at)s, %(kind_{i})s, %(agent_id_{i})s, "
                            f"%(detail_{i})s)" for i in range(len(entries))))
        parameters: dict[str, Any] = {"execution_id": execution_id, "at": now}
        for i, (kind, agent_id, detail) in enumerate(entries):
            parameters[f"kind_{i}"] = kind
            parameters[f"agent_id_{i}"] = agent_id
            parameters[f"detail_{i}"] = json.dumps(dict(detail) if detail else None)
        wire.defer(conn, sql, parameters)
    elif entries:
        # ``inline()``: no implicit RETURNING of the new ids, so the insert needs no answer.
        conn.execute(audit_events.insert().inline(), [
            {"execution_id": execution_id, "at": now, "kind": kind, "agent_id": agent_id,
             "detail": dict(detail) if detail else None}
            for kind, agent_id, detail in entries], execution_options=_DEFER)


def audit_trail(conn: Connection, execution_id: str) -> Sequence[Row[Any]]:
    return conn.execute(sa.select(audit_events).where(
        audit_events.c.execution_id == execution_id).order_by(audit_events.c.id)).all()


def add_outbox(conn: Connection, *, dedupe_key: str, kind: str, execution_id: str | None,
               payload: Mapping[str, Any], now: datetime) -> int | None:
    """Queue a message to publish after commit; None when that key was queued before."""
    stmt = (_insert(conn, outbox)
            .values(dedupe_key=dedupe_key, kind=kind, execution_id=execution_id,
                    payload=dict(payload), created_at=now, attempts=0)
            .on_conflict_do_nothing(index_elements=["dedupe_key"])
            .returning(outbox.c.id))
    return conn.execute(stmt).scalar()


def add_outbox_many(conn: Connection, messages: Sequence[Mapping[str, Any]], now: datetime
                    ) -> dict[str, int]:
    """Queue several messages in one statement; returns dedupe key → id for the new ones."""
    if not messages:
        return {}
    rows = [{"dedupe_key": m["dedupe_key"], "kind": m["kind"],
             "execution_id": m["execution_id"], "payload": dict(m["payload"]),
             "created_at": now, "attempts": 0} for m in messages]
    stmt = (_insert(conn, outbox).values(rows)
            .on_conflict_do_nothing(index_elements=["dedupe_key"])
            .returning(outbox.c.id, outbox.c.dedupe_key))
    return {r.dedupe_key: r.id for r in conn.execute(stmt)}


def relax_durability(conn: Connection) -> None:
    """Let this transaction commit without waiting for its WAL flush (PostgreSQL only).

    Only for writes whose loss in a database crash is harmless: marking outbox rows sent (a
    lost mark means the row is sent again, and delivery is at least once anyway).
    """
    if conn.dialect.name == "postgresql":
        # Deferred: it travels with the transaction's next statement (see store.wire).
        wire.defer(conn, "SET LOCAL synchronous_commit = off")


MARK_SENT_SQL = """\
WITH marks AS (
    SELECT * FROM jsonb_to_recordset(%(marks)s::jsonb)
        AS m(id bigint, at timestamptz, execution_id text, task text, queue text)
), sent AS (
    UPDATE outbox SET sent_at = marks.at, attempted_at = marks.at,
                      attempts = outbox.attempts + 1, last_error = NULL
    FROM marks WHERE outbox.id = marks.id AND outbox.sent_at IS NULL
                 AND outbox.id = ANY(%(ids)s::bigint[])
    RETURNING outbox.id
)
INSERT INTO audit_events (execution_id, at, kind, agent_id, detail)
SELECT execution_id, at, 'exit_delivered', NULL,
       jsonb_build_object('task', task, 'queue', queue)
FROM marks WHERE task IS NOT NULL AND id IN (SELECT id FROM sent)"""


def mark_sent_statement(marks: Sequence[Mapping[str, Any]]) -> tuple[str, dict[str, Any]]:
    """One PostgreSQL statement marking many outbox rows sent and auditing the delivery of
    the exits among them: each mark has ``id``, ``at`` (ISO time), ``execution_id`` and, for
    an exit, ``task`` and ``queue``. A row already marked is left alone (and not audited
    twice).

    The ids also travel as an array the planner can see: it cannot tell how many rows
    ``jsonb_to_recordset`` yields, and would otherwise walk the partial index of unsent rows,
    which keeps an entry for every row marked since the last vacuum (3.5 ms for 2 rows among
    20,000 marked, against 0.1 ms by primary key: docs/benchmarks.md)."""
    return MARK_SENT_SQL, {"marks": json.dumps(list(marks)),
                           "ids": [int(m["id"]) for m in marks]}


def unsent_outbox(conn: Connection, ids: Sequence[int]) -> Sequence[Row[Any]]:
    return conn.execute(sa.select(outbox).where(
        outbox.c.id.in_(ids), outbox.c.sent_at.is_(None)).order_by(outbox.c.id)).all()


def mark_outbox_sent(conn: Connection, ids: Sequence[int], now: datetime) -> None:
    if ids:
        conn.execute(sa.update(outbox).where(outbox.c.id.in_(ids)).values(
            sent_at=now, attempted_at=now, attempts=outbox.c.attempts + 1, last_error=None))


def mark_outbox_failed(conn: Connection, ids: Sequence[int], error: str, now: datetime) -> None:
    if ids:
        conn.execute(sa.update(outbox).where(outbox.c.id.in_(ids)).values(
            attempted_at=now, attempts=outbox.c.attempts + 1, last_error=error[:2000]))


def claim_stale_outbox(conn: Connection, older_than: datetime, now: datetime, limit: int
                       ) -> list[int]:
    """Unsent rows nobody has tried since ``older_than``, marked as tried now.

    ``SKIP LOCKED`` keeps two reconcilers from re-sending the same rows at the same moment.
    A row whose ``next_attempt_at`` is ahead (a webhook exit backing off, or with an attempt
    in flight) waits for it: a dead receiver is retried on its backoff, not every tick.
    """
    tried_long_ago = sa.or_(
        sa.and_(outbox.c.attempted_at.is_(None), outbox.c.created_at <= older_than),
        outbox.c.attempted_at <= older_than,
    )
    due = sa.or_(outbox.c.next_attempt_at.is_(None), outbox.c.next_attempt_at <= now)
    ids = list(conn.execute(
        sa.select(outbox.c.id).where(outbox.c.sent_at.is_(None), tried_long_ago, due)
        .order_by(outbox.c.id).limit(limit).with_for_update(skip_locked=True)).scalars())
    if ids:
        conn.execute(sa.update(outbox).where(outbox.c.id.in_(ids)).values(attempted_at=now))
    return ids


def mark_outbox_superseded(conn: Connection, ids: Sequence[int], now: datetime) -> None:
    """Rows that must not be sent any more (a request whose execution already ended)."""
    if ids:
        conn.execute(sa.update(outbox).where(outbox.c.id.in_(ids)).values(
            sent_at=now, attempted_at=now,
            last_error="superseded: the execution ended before this was delivered"))


def ended_executions(conn: Connection, execution_ids: Iterable[str]) -> set[str]:
    """Those of ``execution_ids`` that are no longer waiting."""
    ids = list(execution_ids)
    if not ids:
        return set()
    return set(conn.execute(sa.select(executions.c.execution_id).where(
        executions.c.execution_id.in_(ids), executions.c.state != "waiting")).scalars())


def outbox_for_execution(conn: Connection, execution_id: str) -> Sequence[Row[Any]]:
    return conn.execute(sa.select(outbox).where(
        outbox.c.execution_id == execution_id).order_by(outbox.c.id)).all()


def add_dead_letter(conn: Connection, *, task_name: str, task_id: str | None, payload: str,
                    reason: str, now: datetime) -> None:
    conn.execute(dead_letters.insert().values(
        received_at=now, task_name=task_name, task_id=task_id, payload=payload, reason=reason))


def beat(conn: Connection, name: str, now: datetime, detail: Mapping[str, Any]) -> None:
    stmt = _insert(conn, heartbeats).values(name=name, beat_at=now, detail=dict(detail))
    conn.execute(stmt.on_conflict_do_update(
        index_elements=["name"],
        set_={"beat_at": stmt.excluded.beat_at, "detail": stmt.excluded.detail}))
