"""SQL of sequential offers (§9 "Offer strategy"): the pool read under the execution's lock,
and the writes a sequential decision adds (each needs no answer, so on PostgreSQL it travels
with the transition's next statement or with ``COMMIT``: no extra round trip).

Lock order. A transition that passes the hold writes agents' rows while it holds the
execution's lock: the next holder's ``last_offered_at`` and a missed holder's status. A claim by
an agent with a capacity (and a reassessment of it) locks the agent first, then the execution
(store/executions.py); a removal deletes the agent, then locks its executions. So: the idle
stamps are written ``SKIP LOCKED`` (an ordering hint, never waited for), and an offer timeout's
wake-up locks the holder's row before the execution (``executions._LOCK_HOLDER``), the order a
claim takes. (The reconciler's batches, for a lost wake-up, lock executions first: should one
then meet the holder's own claim, PostgreSQL's deadlock detection aborts one of the two, and
the claim is retried or the deadline fired by the next tick; the outcome is the same.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from hitl_workers.domain.eligibility import AgentView
from hitl_workers.domain.sequence import Candidate, Sequential
from hitl_workers.store import wire
from hitl_workers.store.tables import agents, offers, timers

_DEFER = {wire.DEFER: True}

# Everyone who can see the conversation (the index on agent_rule_groups, as dispatch reads
# them), with what the next-holder choice orders by: the conversations each holds claimed
# (other than this one) and its idle stamps.
_POOL = """\
SELECT a.agent_id, a.status, a.rule_groups, a.capacity,
       (SELECT count(*) FROM conversations held
         WHERE held.claimed_by @> jsonb_build_array(a.agent_id)
           AND held.conversation_id IS DISTINCT FROM %(conversation_id)s) AS held,
       a.last_offered_at, a.last_claimed_at
  FROM agents a
 WHERE a.agent_id IN (SELECT g.agent_id FROM agent_rule_groups g
                       WHERE g.key_tag = ANY(%(tags)s::varchar[] || ''::varchar)
                         AND g.tags <@ %(tags)s::varchar[])"""


def is_sequential(settings: Mapping[str, Any] | None) -> bool:
    offer = (settings or {}).get("offer")
    return isinstance(offer, Mapping) and offer.get("strategy") == "sequential"


def sequential_of(settings: Mapping[str, Any] | None, rounds: Mapping[str, int],
                  pool: tuple[Candidate, ...]) -> Sequential | None:
    """The view's sequential part, from the stored (validated) settings; None: broadcast."""
    if not is_sequential(settings):
        return None
    offer = (settings or {})["offer"]
    return Sequential(float(offer.get("offer_timeout", 30.0)),
                      offer.get("order", "longest_idle"), offer.get("on_missed", "keep"),
                      dict(rounds), pool)


def read_pool(conn: Connection, conversation_id: str | None, tags: Sequence[str]
              ) -> tuple[Candidate, ...]:
    """The agents who can see a conversation tagged ``tags``, as the next-holder choice
    needs them (the caller holds the execution's lock)."""
    if conn.dialect.name == "postgresql":
        rows = conn.exec_driver_sql(_POOL, {"conversation_id": conversation_id,
                                            "tags": list(tags)}).all()
        return tuple(_candidate(*r) for r in rows)
    from hitl_workers.domain.eligibility import can_see
    from hitl_workers.store import repo

    # SQLite (a small directory, one writer at a time): read it whole.
    held = repo.loads(conn, conversation_id)
    found = conn.execute(sa.select(agents.c.agent_id, agents.c.status, agents.c.rule_groups,
                                   agents.c.capacity, agents.c.last_offered_at,
                                   agents.c.last_claimed_at)).all()
    return tuple(_candidate(r.agent_id, r.status, r.rule_groups, r.capacity,
                            held.get(r.agent_id, 0), r.last_offered_at, r.last_claimed_at)
                 for r in found if can_see(r.rule_groups or (), tags))


def _candidate(agent_id: str, status: str, groups: Any, capacity: int | None, held: int,
               last_offered_at: datetime | None, last_claimed_at: datetime | None
               ) -> Candidate:
    load = int(held or 0)
    view = AgentView(agent_id, status, tuple(tuple(g) for g in groups or ()), capacity,
                     load if capacity is not None else 0)
    stamps = [s for s in (last_offered_at, last_claimed_at) if s is not None]
    return Candidate(view, load, max(stamps) if stamps else None)


# The writes below as PostgreSQL text, sent on the raw path (store/wire.py).
_SET_OFFER = """\
INSERT INTO offers (execution_id, agent_id, status, round, updated_at)
VALUES (%(execution_id)s, %(agent_id)s, %(status)s, %(round)s, %(now)s)
ON CONFLICT (execution_id, agent_id) DO UPDATE
   SET status = excluded.status, round = excluded.round, updated_at = excluded.updated_at"""
_ARM_OFFER_TIMER = """\
INSERT INTO timers (execution_id, kind, due_at, state, armed_at, fired_at)
VALUES (%(execution_id)s, 'offer', %(due_at)s, 'pending', %(armed_at)s, NULL)
ON CONFLICT (execution_id, kind) DO UPDATE
   SET due_at = excluded.due_at, state = excluded.state, armed_at = excluded.armed_at,
       fired_at = NULL"""
_OFFER_TIMER_DONE = """\
UPDATE timers SET state = 'fired', fired_at = %(now)s
 WHERE execution_id = %(execution_id)s AND kind = 'offer' AND state = 'pending'"""


def set_offer(conn: Connection, execution_id: str, agent_id: str, status: str,
              round_: int | None, now: datetime) -> None:
    """Write a sequential offer's status and round (a new row or the agent's earlier one)."""
    if conn.dialect.name == "postgresql":
        wire.defer(conn, _SET_OFFER, {"execution_id": execution_id, "agent_id": agent_id,
                                      "status": status, "round": round_, "now": now})
        return
    from hitl_workers.store.repo import _insert

    stmt = _insert(conn, offers).inline().values(
        execution_id=execution_id, agent_id=agent_id, status=status, round=round_,
        updated_at=now)
    conn.execute(stmt.on_conflict_do_update(
        index_elements=["execution_id", "agent_id"],
        set_={"status": stmt.excluded.status, "round": stmt.excluded.round,
              "updated_at": stmt.excluded.updated_at}), execution_options=_DEFER)


def arm_offer_timer(conn: Connection, execution_id: str, due_at: datetime,
                    armed_at: datetime | None) -> None:
    """The ``offer`` timer (one per execution) pending again for a new hold."""
    if conn.dialect.name == "postgresql":
        wire.defer(conn, _ARM_OFFER_TIMER, {"execution_id": execution_id, "due_at": due_at,
                                            "armed_at": armed_at})
        return
    from hitl_workers.store.repo import _insert

    stmt = _insert(conn, timers).inline().values(
        execution_id=execution_id, kind="offer", due_at=due_at, state="pending",
        armed_at=armed_at, fired_at=None)
    conn.execute(stmt.on_conflict_do_update(
        index_elements=["execution_id", "kind"],
        set_={"due_at": stmt.excluded.due_at, "state": stmt.excluded.state,
              "armed_at": stmt.excluded.armed_at, "fired_at": None}),
        execution_options=_DEFER)


def offer_timer_done(conn: Connection, execution_id: str, now: datetime) -> None:
    """Nobody holds the step: its pending ``offer`` timer is done."""
    if conn.dialect.name == "postgresql":
        wire.defer(conn, _OFFER_TIMER_DONE, {"execution_id": execution_id, "now": now})
        return
    conn.execute(sa.update(timers).where(
        timers.c.execution_id == execution_id, timers.c.kind == "offer",
        timers.c.state == "pending").values(state="fired", fired_at=now),
        execution_options=_DEFER)


def stamp_offered(conn: Connection, agent_id: str, now: datetime) -> None:
    _stamp(conn, agent_id, "last_offered_at", now)


def stamp_claimed(conn: Connection, agent_id: str, now: datetime) -> None:
    _stamp(conn, agent_id, "last_claimed_at", now)


_STAMP = """UPDATE agents SET {column} = %(now)s WHERE agent_id = (
    SELECT agent_id FROM agents WHERE agent_id = %(agent_id)s FOR UPDATE SKIP LOCKED)"""


def _stamp(conn: Connection, agent_id: str, column: str, now: datetime) -> None:
    """An idle stamp (the ``longest_idle`` order), written unless the agent's row is locked.

    ``SKIP LOCKED``: a stamp is an ordering hint, not worth a lock wait. The transition holds
    the execution's lock; whoever holds the agent's (its status or directory entry changing, a
    claim of its under a capacity) may be waiting for that very execution, and a plain UPDATE
    would then deadlock. Such a stamp is lost; the next offer or claim writes it.
    """
    if conn.dialect.name != "postgresql":
        update_agent(conn, agent_id, {column: now})  # SQLite: one writer, no lock to wait on
        return
    wire.defer(conn, _STAMP.format(column=column), {"agent_id": agent_id, "now": now})


def update_agent(conn: Connection, agent_id: str, values: Mapping[str, Any]) -> None:
    """An agent's idle stamps, or a missed holder's ``on_missed`` status, set in the
    transition's transaction."""
    conn.execute(sa.update(agents).where(agents.c.agent_id == agent_id).values(**values),
                 execution_options=_DEFER)
