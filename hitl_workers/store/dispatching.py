"""Dispatch's reads and writes: one round trip to lock and read, one to write (plus COMMIT).

Read (PostgreSQL), in the message that carries ``BEGIN``:

    INSERT INTO conversations … ON CONFLICT DO UPDATE;      -- create it if new, and lock it
    SELECT <the conversation, this execution if it exists, the conversation's waiting
            execution, and the agents who can see the conversation>

Two statements for the reason given in :mod:`hitl_workers.store.executions`: the read must
start once the conversation's lock is held, so that a request for the same conversation that
committed meanwhile is seen. "Who can see it" is answered by the btree index on
``agent_rule_groups.key_tag`` (``key_tag = ANY(T) AND tags <@ T``, see store/tables.py), so a
directory of any size costs about what the groups keyed by the conversation's tags cost.
:func:`hitl_workers.domain.eligibility.select_agents` still decides, from those agents,
who is offered the step and why the others are not.

Write: :func:`create_with_messages` inserts the execution, its outbox rows, its offers (or a
sequential step's hold), its timers and its audit and updates the conversation, all in one
statement (each part only if
the execution was inserted); ``COMMIT`` follows on its own (docs/architecture.md says why).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection

from hitl_workers.domain.eligibility import AgentView
from hitl_workers.store import repo, sequential, wire
from hitl_workers.store.executions import LOAD_SQL


@dataclass(frozen=True)
class DispatchRead:
    conversation_status: str
    tags: tuple[str, ...]
    contact: Any
    mine: tuple[str, str | None] | None
    """(state, exit) of this execution id when it exists already (a retry)."""
    busy_with: str | None
    """Another execution waiting on this conversation."""
    candidates: tuple[AgentView, ...]
    """The agents who can see the conversation (or the specific agent, when one is named)."""


_UPSERT = """\
INSERT INTO conversations (conversation_id, status, tags, contact, claimed_by, updated_at)
VALUES (%(conversation_id)s, 'open', '[]'::jsonb, NULL, '[]'::jsonb, %(now)s)
ON CONFLICT (conversation_id) DO UPDATE SET updated_at = EXCLUDED.updated_at"""

_READ = """\
SELECT c.status, c.tags, c.contact,
  (SELECT json_build_array(e.state, e.exit) FROM executions e
    WHERE e.execution_id = %(execution_id)s) AS mine,
  (SELECT e.execution_id FROM executions e
    WHERE e.conversation_id = %(conversation_id)s AND e.state = 'waiting'
      AND e.execution_id <> %(execution_id)s LIMIT 1) AS busy_with,
  (SELECT json_agg(json_build_array(a.agent_id, a.status, a.rule_groups, a.capacity, {load})
                   ORDER BY a.agent_id)
     FROM agents a
    WHERE {candidates}
  ) AS candidates
FROM conversations c,
     LATERAL (SELECT coalesce(%(tags)s::varchar[],
                              ARRAY(SELECT jsonb_array_elements_text(c.tags))::varchar[])
              AS tags) AS tagged
WHERE c.conversation_id = %(conversation_id)s""".replace(
    "{load}", LOAD_SQL.format(a="a", conversation="c.conversation_id"))
_SEEING = _READ.replace("{candidates}", """a.agent_id IN (
        SELECT g.agent_id FROM agent_rule_groups g
         WHERE g.key_tag = ANY(tagged.tags || ''::varchar) AND g.tags <@ tagged.tags)""")
_SPECIFIC = _READ.replace("{candidates}", "a.agent_id = %(specific)s")
_LOCK_AND_READ = {True: f"{_UPSERT};\n{_SEEING}", False: f"{_UPSERT};\n{_SPECIFIC}"}
"""By "no specific agent": the statement text, built once."""


def lock_and_read(conn: Connection, *, execution_id: str, conversation_id: str,
                  tags: Sequence[str] | None, specific_agent_id: str | None,
                  now: datetime) -> DispatchRead:
    """Lock (creating if new) the conversation and read what dispatch decides from.

    ``tags``: the request's conversation tags, or None to use the stored ones.
    """
    if conn.dialect.name != "postgresql":
        return _portable(conn, execution_id, conversation_id, tags, specific_agent_id, now)
    row = wire.fetch_one(conn, _LOCK_AND_READ[specific_agent_id is None], {
        "conversation_id": conversation_id, "execution_id": execution_id, "now": now,
        "tags": list(tags) if tags is not None else None,
        "specific": specific_agent_id})
    candidates = tuple(AgentView(a, s, tuple(tuple(g) for g in groups or ()), capacity,
                                 int(load or 0))
                       for a, s, groups, capacity, load in row["candidates"] or ())
    mine = row["mine"]
    return DispatchRead(row["status"], tuple(row["tags"] or ()), row["contact"],
                        (mine[0], mine[1]) if mine else None, row["busy_with"], candidates)


def _portable(conn: Connection, execution_id: str, conversation_id: str,
              tags: Sequence[str] | None, specific_agent_id: str | None,
              now: datetime) -> DispatchRead:
    # SQLite (one machine, a small directory): the same answers with plain queries; the
    # directory is read whole and select_agents filters it.
    conversation = repo.lock_conversation(conn, conversation_id, now)
    mine, busy_with = repo.existing_or_waiting(conn, execution_id, conversation_id)
    everyone = repo.all_agents(conn, except_conversation=conversation_id)
    candidates = tuple(a for a in everyone
                       if specific_agent_id is None or a.agent_id == specific_agent_id)
    return DispatchRead(conversation.status, tuple(conversation.tags or ()),
                        conversation.contact, (mine.state, mine.exit) if mine else None,
                        busy_with, candidates)


# Each part writes only if the execution was inserted (``FROM created``, or ``EXISTS``), as
# the statements it replaces were only sent then. Timers reference the execution row inserted
# by this same statement: PostgreSQL checks their foreign key at its end, when that row is
# there. (Offers name it without a key, revision 0008: one check per offer was most of a
# fan-out's insert; an offer is written only here or under the execution's lock.) The
# conversation's row lock is ours already (the read's upsert). A sequential holder's idle
# stamp skips a locked agent row (SKIP LOCKED: an ordering hint never waited for, see
# store/sequential.py ``_stamp``); every other row is new.
_CREATE = """\
WITH created AS (
    INSERT INTO executions
    SELECT * FROM json_populate_record(NULL::executions, %(execution)s::json)
    ON CONFLICT (execution_id) DO NOTHING
    RETURNING execution_id
), """ + repo.queue_messages_cte("created") + """, conversation AS (
    UPDATE conversations
       SET updated_at = %(now)s,
           status = coalesce(CAST(%(conversation_status)s AS text), status),
           tags = CAST(%(tags)s AS jsonb), contact = CAST(%(contact)s AS json)
     WHERE conversation_id = %(conversation_id)s AND CAST(%(set_conversation)s AS boolean)
       AND EXISTS (SELECT 1 FROM created)
), offered AS (
    INSERT INTO offers (execution_id, agent_id, status, updated_at)
    SELECT c.execution_id, a, 'offered', %(now)s
      FROM created c, unnest(CAST(%(offers)s AS varchar[])) AS a
), held AS (
    INSERT INTO offers (execution_id, agent_id, status, round, updated_at)
    SELECT c.execution_id, CAST(%(hold)s AS text), 'offered', 1, %(now)s
      FROM created c WHERE CAST(%(hold)s AS text) IS NOT NULL
), stamped AS (
    UPDATE agents SET last_offered_at = %(now)s
     WHERE agent_id = (SELECT agent_id FROM agents WHERE agent_id = CAST(%(hold)s AS text)
                          AND EXISTS (SELECT 1 FROM created) FOR UPDATE SKIP LOCKED)
), timed AS (
    INSERT INTO timers (execution_id, kind, due_at, state, armed_at)
    SELECT c.execution_id, t.v->>0, CAST(t.v->>1 AS timestamptz), 'pending',
           CAST(t.v->>2 AS timestamptz)
      FROM created c, json_array_elements(CAST(%(timers)s AS json)) AS t(v)
), audited AS (
    INSERT INTO audit_events (execution_id, at, kind, agent_id, detail)
    SELECT c.execution_id, %(now)s, e.v->>0, e.v->>1, CAST(e.v->2 AS jsonb)
      FROM created c,
           json_array_elements(CAST(%(audits)s AS json)) WITH ORDINALITY AS e(v, n)
     ORDER BY e.n
)
SELECT (SELECT count(*) FROM created) AS created,
       (SELECT json_agg(json_build_array(dedupe_key, id)) FROM queued) AS queued"""


def create_with_messages(conn: Connection, values: Mapping[str, Any],
                         messages: Sequence[Mapping[str, Any]], now: datetime, *,
                         conversation: Mapping[str, Any] | None = None,
                         offers: Sequence[str] = (), hold: str | None = None,
                         timers: Sequence[tuple[str, datetime, datetime | None]] = (),
                         audits: Sequence[repo.AuditEntry] = ()
                         ) -> tuple[bool, dict[str, int]]:
    """Insert the execution unless its id exists, and (only if it was inserted) everything
    dispatch writes with it, in one statement: its outbox rows, the ``conversation``'s
    columns (``tags`` and ``contact``, and ``status`` when given), its ``offers`` (agent ids)
    or, for a sequential step, the ``hold`` (the agent offered it first, round 1, and its idle
    stamp), its ``timers`` ((kind, due, armed at)) and its ``audits``, in order. Returns
    (created, dedupe key → outbox id)."""
    if conn.dialect.name != "postgresql":
        # SQLite (BEGIN IMMEDIATE: one writer at a time): the same writes one by one.
        if not repo.insert_execution(conn, values):
            return False, {}
        ids = repo.add_outbox_many(conn, messages, now)
        if conversation is not None:
            repo.update_conversation(conn, values["conversation_id"], now, **conversation)
        repo.insert_offers(conn, values["execution_id"], offers, now)
        if hold is not None:
            sequential.set_offer(conn, values["execution_id"], hold, "offered", 1, now)
            sequential.stamp_offered(conn, hold, now)
        repo.insert_timers(conn, values["execution_id"], timers)
        repo.audit_many(conn, values["execution_id"], now, audits)
        return True, ids
    row = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in values.items()}
    found = wire.fetch_one(conn, _CREATE, {
        "execution": json.dumps(row), "now": now,
        "messages": json.dumps([{"dedupe_key": m["dedupe_key"], "kind": m["kind"],
                                 "execution_id": m["execution_id"], "payload": m["payload"]}
                                for m in messages]),
        "conversation_id": values["conversation_id"],
        "set_conversation": conversation is not None,
        "conversation_status": (conversation or {}).get("status"),
        # As SQLAlchemy's JSON types write them (``json.dumps``; None as JSON ``null``).
        "tags": json.dumps(conversation["tags"]) if conversation is not None else None,
        "contact": json.dumps(conversation["contact"]) if conversation is not None else None,
        "offers": list(offers), "hold": hold,
        "timers": json.dumps([[kind, due.isoformat(), armed.isoformat() if armed else None]
                              for kind, due, armed in timers]),
        "audits": repo.audit_rows(audits)})
    return bool(found["created"]), dict(found["queued"] or ())
