"""A transition writes in one statement (issue 8), on PostgreSQL and SQLite (``make run``).

Dispatch's one write inserts the execution and, only if it inserted it, the outbox rows, the
conversation's columns, the offers, the timers and the audit; a transition that ends the
execution writes the offer change, the timers, the conversation, the winner's idle stamp and
the audit with the guarded end; one that does not end it writes its offer change and audit in
one statement that travels with ``COMMIT``. These check what ends up in the tables (the same
on both stores) and, on PostgreSQL, what travels in each message (store/wire.py ``_send``)."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from hitl_workers.clock import utcnow
from hitl_workers.services import agent_events, dispatch
from hitl_workers.store import dispatching, repo, wire
from hitl_workers.store.db import transaction
from hitl_workers.store.tables import agent_events as answers
from hitl_workers.store.tables import agents, audit_events, conversations, offers, timers
from tests.support.steps import add_agents

DEFAULTS = dispatch.Defaults("flow.exit", "flow.exits", 600.0)


@pytest.fixture
def messages(monkeypatch: pytest.MonkeyPatch) -> list[list[bytes]]:
    """Every message a folded transaction sends, as its ``;``-separated chunks."""
    sent: list[list[bytes]] = []
    send = wire._send

    def recording(cursor: Any, pending: Any, last: bytes) -> None:
        sent.append([*pending.chunks, last])
        send(cursor, pending, last)

    monkeypatch.setattr(wire, "_send", recording)
    return sent


def request(team: str, **settings: Any) -> dict[str, Any]:
    return {"execution_id": f"exec-{uuid.uuid4().hex[:12]}",
            "conversation_id": f"conv-{uuid.uuid4().hex[:12]}",
            "conversation": {"tags": [team], "contact": {"z": 1, "a": [2, 3]}},
            "settings": {"timeout": "5m", "popup": {"text": "t",
                                                    "timer": {"auto_action_timeout": "2m"}},
                         **settings}}


def submit(kwargs: dict[str, Any]) -> dict[str, Any]:
    with transaction() as conn:
        answer, _ = dispatch.submit(conn, (), kwargs, task_id=None, now=utcnow(),
                                    defaults=DEFAULTS)
    return answer


def event(action: agent_events.Action, execution_id: str, agent_id: str,
          event_id: str | None = None) -> dict[str, Any]:
    with transaction() as conn:
        answer, _ = agent_events.handle_event(
            conn, action, agent_events.AgentEventIn(agent_id=agent_id, execution_id=execution_id,
                                                    event_id=event_id), utcnow())
    return answer


def table(query: Any) -> list[Any]:
    with transaction() as conn:
        return [tuple(r) for r in conn.execute(query)]


def audit_kinds(execution_id: str) -> list[tuple[str, str | None]]:
    return table(sa.select(audit_events.c.kind, audit_events.c.agent_id)
                 .where(audit_events.c.execution_id == execution_id)
                 .order_by(audit_events.c.id))


def test_dispatch_writes_everything_with_the_execution(store: str,
                                                       messages: list[list[bytes]]) -> None:
    team = f"team:{uuid.uuid4().hex[:6]}"
    able = add_agents(team, 2)
    kwargs = request(team)
    messages.clear()
    assert submit(kwargs)["state"] == "waiting"
    sent = list(messages)
    execution_id = kwargs["execution_id"]

    status, tags, contact = table(
        sa.select(conversations.c.status, conversations.c.tags, conversations.c.contact)
        .where(conversations.c.conversation_id == kwargs["conversation_id"]))[0]
    assert (status, tags) == ("needs_action", [team])
    assert list(contact) == ["z", "a"] and contact == {"z": 1, "a": [2, 3]}  # as sent
    assert sorted(table(sa.select(offers.c.agent_id, offers.c.status)
                        .where(offers.c.execution_id == execution_id))) == \
        [(a, "offered") for a in able]
    deadlines = {kind: (state, armed is not None) for kind, state, armed in table(
        sa.select(timers.c.kind, timers.c.state, timers.c.armed_at)
        .where(timers.c.execution_id == execution_id))}
    assert deadlines == {"countdown": ("pending", True), "timeout": ("pending", True)}
    assert audit_kinds(execution_id) == [("requested", None), ("notified", None)]
    notified = table(sa.select(audit_events.c.detail).where(
        audit_events.c.execution_id == execution_id, audit_events.c.kind == "notified"))[0][0]
    assert notified["notified"] == able

    if store == "postgresql":
        # The read (BEGIN, the upsert and the read), the one write, COMMIT on its own.
        assert len(sent) == 3
        write, commit = sent[1:]
        assert len(write) == 1 and commit == [b"COMMIT"]


def test_an_execution_not_inserted_writes_nothing_else(store: str) -> None:
    team = f"team:{uuid.uuid4().hex[:6]}"
    add_agents(team, 1)
    kwargs = request(team)
    submit(kwargs)
    execution_id, conversation_id = kwargs["execution_id"], kwargs["conversation_id"]
    before = table(sa.select(conversations).where(
        conversations.c.conversation_id == conversation_id))
    now = utcnow() + timedelta(seconds=1)
    with transaction() as conn:
        created, ids = dispatching.create_with_messages(
            conn, {"execution_id": execution_id, "conversation_id": conversation_id,
                   "state": "waiting", "requested_at": now},
            [{"dedupe_key": f"other:{execution_id}", "kind": "notify",
              "execution_id": execution_id, "payload": {"agents": ["x"]}}], now,
            conversation={"status": "claimed", "tags": ["other"], "contact": None},
            offers=["someone-else"], timers=[("timeout", now, None)],
            audits=[("requested", None, None)])
    assert (created, ids) == (False, {})
    assert table(sa.select(conversations).where(
        conversations.c.conversation_id == conversation_id)) == before
    assert ("someone-else",) not in table(sa.select(offers.c.agent_id)
                                          .where(offers.c.execution_id == execution_id))
    assert audit_kinds(execution_id) == [("requested", None), ("notified", None)]
    with transaction() as conn:
        assert repo.outbox_for_execution(conn, execution_id)[-1].dedupe_key != \
            f"other:{execution_id}"


def test_a_claim_ends_the_step_in_one_write(store: str, messages: list[list[bytes]]) -> None:
    team = f"team:{uuid.uuid4().hex[:6]}"
    winner, other = add_agents(team, 2)
    kwargs = request(team)
    submit(kwargs)
    execution_id = kwargs["execution_id"]
    messages.clear()
    assert event("claim", execution_id, winner)["outcome"] == "claimed"
    sent = list(messages)

    assert table(sa.select(conversations.c.status, conversations.c.claimed_by).where(
        conversations.c.conversation_id == kwargs["conversation_id"])) == \
        [("claimed", [winner])]
    stamp = table(sa.select(agents.c.last_claimed_at).where(agents.c.agent_id == winner))
    assert stamp[0][0] is not None  # §9 longest_idle: the winner's idle stamp
    assert dict(table(sa.select(timers.c.kind, timers.c.state)
                      .where(timers.c.execution_id == execution_id))) == \
        {"countdown": "cancelled", "timeout": "cancelled"}
    assert audit_kinds(execution_id)[2:] == [("claimed", winner), ("exit_recorded", None)]
    with transaction() as conn:
        queued = {r.dedupe_key: r.payload for r in repo.outbox_for_execution(conn, execution_id)}
    assert f"exit:{execution_id}" in queued
    assert sorted(queued[f"withdrawn:{execution_id}"]["agents"]) == sorted([winner, other])

    if store == "postgresql":
        assert len(sent) == 3  # the lock and read, the one write, COMMIT
        write, commit = sent[1:]
        assert len(write) == 1 and commit == [b"COMMIT"]


def test_a_reject_that_does_not_end_writes_one_statement_with_commit(
        store: str, messages: list[list[bytes]]) -> None:
    team = f"team:{uuid.uuid4().hex[:6]}"
    first, second = add_agents(team, 2)
    kwargs = request(team, reject_policy="all")
    submit(kwargs)
    execution_id = kwargs["execution_id"]
    messages.clear()
    assert event("reject", execution_id, first)["state"] == "waiting"
    sent = list(messages)

    assert dict(table(sa.select(offers.c.agent_id, offers.c.status)
                      .where(offers.c.execution_id == execution_id))) == \
        {first: "rejected", second: "offered"}
    assert audit_kinds(execution_id)[2:] == [("rejected", first)]
    if store == "postgresql":
        # The read, then the offer and its audit in one statement travelling with COMMIT.
        assert len(sent) == 2 and len(sent[1]) == 2 and sent[1][1] == b"COMMIT"

    # The last reject ends it (nobody left to claim it): the offer change rides in the end's
    # one write.
    assert event("reject", execution_id, second)["exit"] == "not_claimed"
    assert dict(table(sa.select(offers.c.agent_id, offers.c.status)
                      .where(offers.c.execution_id == execution_id))) == \
        {first: "rejected", second: "rejected"}
    assert [kind for kind, _ in audit_kinds(execution_id)][-2:] == ["rejected",
                                                                    "exit_recorded"]


@pytest.mark.parametrize("action", ["claim", "reject"])
def test_an_events_answer_is_stored_by_the_same_write(store: str, messages: list[list[bytes]],
                                                      action: agent_events.Action) -> None:
    team = f"team:{uuid.uuid4().hex[:6]}"
    agent_id, _other = add_agents(team, 2)
    kwargs = request(team, reject_policy="all")
    submit(kwargs)
    execution_id, event_id = kwargs["execution_id"], uuid.uuid4().hex
    messages.clear()
    answer = event(action, execution_id, agent_id, event_id)
    sent = list(messages)
    assert answer["outcome"] == ("claimed" if action == "claim" else "reject_recorded")
    assert table(sa.select(answers.c.action, answers.c.execution_id, answers.c.result)
                 .where(answers.c.agent_id == agent_id, answers.c.event_id == event_id)) == \
        [(action, execution_id, answer)]
    assert event(action, execution_id, agent_id, event_id) == answer  # verbatim
    if store == "postgresql" and action == "claim":
        assert len(sent) == 3 and len(sent[1]) == 1 and sent[2] == [b"COMMIT"]
    elif store == "postgresql":
        assert len(sent) == 2 and len(sent[1]) == 2 and sent[1][1] == b"COMMIT"


def test_a_sequential_dispatch_writes_its_hold_with_the_execution(
        store: str, messages: list[list[bytes]]) -> None:
    team = f"team:{uuid.uuid4().hex[:6]}"
    able = add_agents(team, 2)
    kwargs = request(team, offer={"strategy": "sequential", "offer_timeout": "10s"})
    messages.clear()
    with transaction() as conn:
        answer, effects = dispatch.submit(conn, (), kwargs, task_id=None, now=utcnow(),
                                          defaults=DEFAULTS)
    sent = list(messages)
    assert answer["state"] == "waiting"
    execution_id = kwargs["execution_id"]

    held = table(sa.select(offers.c.agent_id, offers.c.status, offers.c.round)
                 .where(offers.c.execution_id == execution_id))
    assert len(held) == 1 and held[0][0] in able and held[0][1:] == ("offered", 1)
    holder = held[0][0]
    stamp = table(sa.select(agents.c.last_offered_at).where(agents.c.agent_id == holder))
    assert stamp[0][0] is not None  # §9 longest_idle: the holder's idle stamp
    deadlines = {kind: (state, armed is not None) for kind, state, armed in table(
        sa.select(timers.c.kind, timers.c.state, timers.c.armed_at)
        .where(timers.c.execution_id == execution_id))}
    assert deadlines["offer"] == ("pending", True)
    assert [kind for _, kind, _ in effects.arm] == ["offer", "countdown"]  # as before
    assert audit_kinds(execution_id) == [("requested", None), ("notified", None),
                                         ("offered", holder)]
    if store == "postgresql":
        # The read (and the pool read the next-holder choice needs), the one write, COMMIT.
        write, commit = sent[-2:]
        assert len(write) == 1 and commit == [b"COMMIT"]
