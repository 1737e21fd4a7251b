"""The execution aggregate, read under its lock: one round trip for everything a transition
needs (docs/architecture.md, step 1).

On PostgreSQL one message carries ``BEGIN`` (see :mod:`hitl_workers.store.wire`), the lock and
the read:

    SELECT 1 FROM executions WHERE execution_id = … FOR UPDATE;
    SELECT <the execution, its conversation, offers, timers, the agent, a stored answer>

Two statements, not one, on purpose: under READ COMMITTED a statement reads the snapshot taken
when it *started*, so a single ``SELECT … FOR UPDATE`` that waited for a concurrent claim would
read that claim's offers and stored answers as they were *before* it committed (the locked row
itself is re-read, its neighbours are not). The second statement starts after the lock is ours
and sees everything committed before it. SQLite (one writer at a time, ``BEGIN IMMEDIATE``)
reads the same things with a few plain queries.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from hitl_workers.domain.eligibility import AgentView, Audience
from hitl_workers.domain.machine import ExecutionView, TimerView
from hitl_workers.domain.sequence import Candidate
from hitl_workers.store import wire
from hitl_workers.store.sequential import is_sequential, read_pool, sequential_of
from hitl_workers.store.tables import agent_events, agents, offers, timers


@dataclass(frozen=True)
class LockedExecution:
    """An execution row (with its conversation's columns) read under its row lock."""

    execution_id: str
    conversation_id: str | None
    flow_id: str | None
    step_id: str | None
    state: str
    exit: str | None
    merge_field: Mapping[str, Any] | None
    settings: Mapping[str, Any] | None
    reply_task: str | None
    reply_queue: str | None
    conversation_prev_status: str | None
    dispatched_at: datetime | None
    tags: tuple[str, ...] = ()
    conversation_status: str | None = None
    claimed_by: tuple[str, ...] = ()
    timer_kind: str | None = None
    """The overdue deadline a reconciler batch locked this execution for (else None)."""

    @classmethod
    def from_row(cls, row: Row[Any] | Mapping[Any, Any]) -> LockedExecution:
        m: Mapping[Any, Any] = row._mapping if isinstance(row, Row) else row
        return cls(
            execution_id=m["execution_id"], conversation_id=m["conversation_id"],
            flow_id=m["flow_id"], step_id=m["step_id"], state=m["state"], exit=m["exit"],
            merge_field=m["merge_field"], settings=m["settings"],
            reply_task=m["reply_task"], reply_queue=m["reply_queue"],
            conversation_prev_status=m["conversation_prev_status"],
            dispatched_at=m["dispatched_at"], tags=tuple(m.get("tags") or ()),
            conversation_status=m.get("conversation_status"),
            claimed_by=tuple(m.get("claimed_by") or ()), timer_kind=m.get("timer_kind"))


@dataclass(frozen=True)
class StoredEvent:
    """The first answer to an agent's event id, and what that event was."""

    action: str
    execution_id: str | None
    conversation_id: str | None
    result: dict[str, Any]


@dataclass(frozen=True)
class Locked:
    """What one transition reads: the locked execution (None when there is no such
    execution) and its view, the acting agent, and the stored answer to a repeated event."""

    row: LockedExecution | None
    view: ExecutionView | None
    agent: AgentView | None = None
    stored: StoredEvent | None = None


def view_of(row: LockedExecution, offer_pairs: Sequence[Sequence[Any]],
            timer_rows: Sequence[tuple[str, datetime, str]],
            pool: Callable[[], tuple[Candidate, ...]] | None = None) -> ExecutionView:
    """:func:`decide`'s view of a locked execution. ``offer_pairs`` (agent id, status, and
    the round of a sequential offer) come in the order the offers last changed
    (``rejectedBy`` follows it). ``pool``: for a sequential step, the agents who can see it
    (the next-holder choice needs them; store/sequential.py)."""
    settings = row.settings or {}
    rounds = {p[0]: int(p[2]) for p in offer_pairs if len(p) > 2 and p[2] is not None}
    sequential = None
    if is_sequential(settings):
        sequential = sequential_of(settings, rounds, pool() if pool is not None else ())
    return ExecutionView(
        execution_id=row.execution_id,
        state=row.state,  # type: ignore[arg-type]
        exit=row.exit,  # type: ignore[arg-type]
        merge_field=row.merge_field,
        tags=row.tags,
        audience=Audience(
            specific_agent_id=settings.get("specific_agent_id"),
            allow_busy=bool(settings.get("allow_busy")),
            allow_offline=bool(settings.get("allow_offline")),
        ),
        reject_policy=settings.get("reject_policy", "any"),
        offers={p[0]: p[1] for p in offer_pairs},
        rejected_by=tuple(p[0] for p in offer_pairs if p[1] == "rejected"),
        timers={kind: TimerView(due_at, state) for kind, due_at, state in timer_rows},
        routed=settings.get("priority") is not None or settings.get("offer") is not None,
        sequential=sequential,
    )


_LOCK = "SELECT 1 FROM executions WHERE execution_id = %(execution_id)s FOR UPDATE"

# A claim by an agent with a capacity locks the agent first (§9): two claims by one agent on
# two different executions would each hold only their own execution's lock, read the same
# load and both take the last slot. Under the agent's lock the second reads the first's
# ``claimed_by`` once it commits. Agent before execution, the order every path that holds
# both takes (the directory changes lock the agent row by writing it, then executions).
_LOCK_AGENT = """SELECT 1 FROM agents WHERE agent_id = %(agent_id)s AND capacity IS NOT NULL
FOR UPDATE"""

# Load (§9): the conversations whose claimed_by holds the agent, other than this one (claiming
# a conversation it already holds adds nothing). The GIN index on claimed_by answers @>.
LOAD_SQL = """CASE WHEN {a}.capacity IS NULL THEN 0 ELSE (
    SELECT count(*) FROM conversations held
     WHERE held.claimed_by @> jsonb_build_array({a}.agent_id)
       AND held.conversation_id IS DISTINCT FROM {conversation}) END"""

_READ_EXECUTION = """\
SELECT e.execution_id, e.conversation_id, e.flow_id, e.step_id, e.state, e.exit,
       e.merge_field, e.settings, e.reply_task, e.reply_queue, e.conversation_prev_status,
       e.dispatched_at, c.tags, c.status AS conversation_status, c.claimed_by,
       (SELECT json_agg(json_build_array(o.agent_id, o.status, o.round)
                        ORDER BY o.updated_at, o.agent_id)
          FROM offers o WHERE o.execution_id = e.execution_id) AS offers_json,
       (SELECT json_agg(json_build_array(t.kind, t.due_at, t.state))
          FROM timers t WHERE t.execution_id = e.execution_id) AS timers_json
  FROM executions e
  LEFT JOIN conversations c ON c.conversation_id = e.conversation_id
 WHERE e.execution_id = %(execution_id)s"""

# With an agent: the execution (or none), the agent and the stored answer, in one row.
_READ = ("""\
SELECT x.*,
  (SELECT json_build_array(a.agent_id, a.status, a.rule_groups, a.capacity,
                           {load})
     FROM agents a WHERE a.agent_id = %(agent_id)s) AS agent_json,
  (SELECT json_build_array(ev.action, ev.execution_id, ev.conversation_id, ev.result)
     FROM agent_events ev
    WHERE ev.agent_id = %(agent_id)s AND ev.event_id = %(event_id)s) AS stored_json
FROM (SELECT 1) AS one LEFT JOIN (
""" + _READ_EXECUTION + """
) AS x ON true""").replace("{load}", LOAD_SQL.format(a="a", conversation="x.conversation_id"))


# An offer timeout (§9) may write its holder's status (on_missed): the holder is locked before
# the execution, the order its own claim takes (``_LOCK_AGENT``), so that a holder claiming at
# the very moment its offer times out waits for the timeout or makes it wait, and neither
# deadlocks. Read before the execution's lock: should the hold pass meanwhile, the wake-up is
# for an earlier hold and changes nothing (stale), so locking the earlier holder is harmless.
_LOCK_HOLDER = """SELECT 1 FROM agents WHERE agent_id = (
    SELECT o.agent_id FROM offers o
     WHERE o.execution_id = %(execution_id)s AND o.round IS NOT NULL
       AND o.status IN ('offered', 'closed')) FOR UPDATE"""


def lock(conn: Connection, execution_id: str | None, *, agent_id: str | None = None,
         event_id: str | None = None, claiming: bool = False,
         holder_first: bool = False) -> Locked:
    """Lock the execution and read everything a transition on it needs (module docstring).

    ``agent_id`` reads that agent; with ``event_id`` too, the answer stored for that event.
    ``claiming``: the agent is about to claim, so its row is locked first when it has a
    capacity (see ``_LOCK_AGENT``). ``holder_first``: an offer timeout; the sequential
    holder's row is locked first (see ``_LOCK_HOLDER``).
    """
    if conn.dialect.name != "postgresql":
        return _lock_portable(conn, execution_id, agent_id, event_id)
    first = [_LOCK_AGENT] if claiming else []
    if holder_first:
        first.append(_LOCK_HOLDER)
    # Without an agent (a deadline, a cancel) the read skips the agent's and the stored
    # answer's subqueries: PostgreSQL plans every statement afresh, and planning them costs
    # more than running them (about 0.2 ms of a fired deadline's ~0.4 ms read).
    with_agent = agent_id is not None or event_id is not None
    statements = ";\n".join([*first, _LOCK, _READ if with_agent else _READ_EXECUTION])
    rows = wire.fetch(conn, statements, {
        "execution_id": execution_id, "agent_id": agent_id, "event_id": event_id})
    if not rows:
        return Locked(None, None)
    m = rows[0]
    agent = _agent(m["agent_json"]) if with_agent else None
    stored = StoredEvent(*m["stored_json"]) if with_agent and m["stored_json"] else None
    if m["execution_id"] is None:
        return Locked(None, None, agent, stored)
    row = LockedExecution.from_row(m)
    timer_rows = [(kind, datetime.fromisoformat(due), state)
                  for kind, due, state in m["timers_json"] or ()]
    # A sequential step also reads who can see it: one more statement, for it only (folded
    # into the read above, its planning would cost every broadcast transition ~0.1 ms).
    pool = partial(read_pool, conn, row.conversation_id, row.tags)
    return Locked(row, view_of(row, m["offers_json"] or (), timer_rows, pool), agent, stored)


def _agent(found: Sequence[Any] | None) -> AgentView | None:
    if not found:
        return None
    agent_id, status, groups, capacity, load = found
    return AgentView(agent_id, status, tuple(tuple(g) for g in groups or ()), capacity,
                     int(load or 0))


def _lock_portable(conn: Connection, execution_id: str | None, agent_id: str | None,
                   event_id: str | None) -> Locked:
    from hitl_workers.store import repo

    row = repo.lock_execution(conn, execution_id) if execution_id else None
    agent = None
    if agent_id is not None:
        found = conn.execute(sa.select(agents.c.agent_id, agents.c.status,
                                       agents.c.rule_groups, agents.c.capacity)
                             .where(agents.c.agent_id == agent_id)).first()
        if found is not None:
            # SQLite runs one writer at a time (BEGIN IMMEDIATE): the load read here holds.
            load = (repo.loads(conn, row.conversation_id if row is not None else None)
                    .get(agent_id, 0) if found.capacity is not None else 0)
            agent = _agent((*found, load))
    stored = None
    if agent_id is not None and event_id is not None:
        hit = conn.execute(sa.select(agent_events.c.action, agent_events.c.execution_id,
                                     agent_events.c.conversation_id, agent_events.c.result)
                           .where(agent_events.c.agent_id == agent_id,
                                  agent_events.c.event_id == event_id)).first()
        stored = StoredEvent(*hit) if hit else None
    if row is None:
        return Locked(None, None, agent, stored)
    locked = LockedExecution.from_row(row)
    return Locked(locked, views(conn, [locked])[locked.execution_id], agent, stored)


def views(conn: Connection, rows: Sequence[LockedExecution]) -> dict[str, ExecutionView]:
    """The views of several locked executions (offers and timers in two queries)."""
    if not rows:
        # The reconciler's usual tick: nothing overdue. Two round trips saved each second.
        return {}
    ids = [row.execution_id for row in rows]
    offer_pairs: dict[str, list[tuple[str, str, int | None]]] = {i: [] for i in ids}
    for r in conn.execute(sa.select(offers.c.execution_id, offers.c.agent_id, offers.c.status,
                                    offers.c.round)
                          .where(offers.c.execution_id.in_(ids))
                          .order_by(offers.c.updated_at, offers.c.agent_id)):
        offer_pairs[r.execution_id].append((r.agent_id, r.status, r.round))
    timer_rows: dict[str, list[tuple[str, datetime, str]]] = {i: [] for i in ids}
    for t in conn.execute(sa.select(timers.c.execution_id, timers.c.kind, timers.c.due_at,
                                    timers.c.state).where(timers.c.execution_id.in_(ids))):
        timer_rows[t.execution_id].append((t.kind, t.due_at, t.state))
    # A sequential step also reads who can see it (one query each; a broadcast step none).
    return {row.execution_id: view_of(row, offer_pairs[row.execution_id],
                                      timer_rows[row.execution_id], partial(
                                          read_pool, conn, row.conversation_id, row.tags))
            for row in rows}
