"""Races decided by PostgreSQL alone: the use cases called from many threads, each in its own
committed transaction (the integration tier: exactly one winner)."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from hitl_workers.clock import utcnow
from hitl_workers.services import agents as directory
from hitl_workers.services import dispatch
from hitl_workers.services.agent_events import AgentEventIn, handle_event
from hitl_workers.settings import get_settings
from hitl_workers.store import repo
from hitl_workers.store.db import reset_engine, transaction
from hitl_workers.store.tables import agent_events
from hitl_workers.tasks.common import in_transaction

DEFAULTS = dispatch.Defaults("flow.step_exited", "flow-integration", timer_horizon_s=600)
THREADS = 20


@pytest.fixture
def wide_pool(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """An engine whose pool holds a connection for every racing thread at once."""
    monkeypatch.setattr(get_settings(), "db_pool_size", THREADS + 2)
    reset_engine()
    yield
    reset_engine()


def add_agents(team: str, count: int, status: str = "available") -> list[str]:
    ids = [f"agent-{uuid.uuid4().hex[:10]}" for _ in range(count)]
    with transaction() as conn:
        for agent_id in ids:
            directory.upsert_agent(conn, directory.UpsertAgentIn(
                agent_id=agent_id, status=status, rule_groups=[[team]]), utcnow())
    return ids


def start_step(team: str, **settings: Any) -> str:
    execution_id = f"exec-{uuid.uuid4().hex[:12]}"
    kwargs = {"execution_id": execution_id, "conversation_id": f"conv-{uuid.uuid4().hex[:12]}",
              "conversation": {"tags": [team]}, "settings": settings}
    with transaction() as conn:
        answer, _effects = dispatch.submit(conn, (), kwargs, task_id=None, now=utcnow(),
                                           defaults=DEFAULTS)
    assert answer["state"] == "waiting", answer
    return execution_id


def at_once(work: list[Callable[[], Any]]) -> list[Any]:
    """Run every callable on its own thread, released together; results in order."""
    barrier = threading.Barrier(len(work))
    results: list[Any] = [None] * len(work)
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            results[index] = work[index](barrier)
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(work))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    if errors:
        raise errors[0]
    return results


def event_in_own_transaction(action: str, **fields: str) -> Callable[[threading.Barrier], Any]:
    """Open a transaction, wait for everyone, then handle the event and commit."""
    def work(barrier: threading.Barrier) -> Any:
        with transaction() as conn:
            conn.execute(sa.text("SELECT 1"))  # the connection is checked out and live
            barrier.wait(timeout=30)
            answer, _effects = handle_event(conn, action, AgentEventIn(**fields), utcnow())
        return answer

    return work


def exit_rows(execution_id: str) -> int:
    with transaction() as conn:
        return sum(1 for r in repo.outbox_for_execution(conn, execution_id) if r.kind == "exit")


@pytest.fixture
def team() -> str:
    return f"team:int-{uuid.uuid4().hex[:8]}"


def test_twenty_concurrent_claims_make_exactly_one_winner(wide_pool, team):
    crowd = add_agents(team, THREADS)
    eid = start_step(team)
    results = at_once([event_in_own_transaction("claim", execution_id=eid, agent_id=a)
                       for a in crowd])
    assert Counter(r["outcome"] for r in results) == {"claimed": 1,
                                                      "already_resolved": THREADS - 1}
    winner = crowd[[r["outcome"] for r in results].index("claimed")]
    assert all(r["merge_field"] == {"addClaimedBy": winner} for r in results)
    with transaction() as conn:
        row = repo.get_execution(conn, eid)
    assert (row.state, row.exit) == ("exited", "claimed")
    assert exit_rows(eid) == 1


@pytest.mark.parametrize("round_", range(5))
def test_the_last_two_rejects_racing_under_reject_policy_all_end_it_once(wide_pool, team,
                                                                         round_):
    first, second, third = add_agents(team, 3)
    eid = start_step(team, reject_policy="all")
    with transaction() as conn:
        answer, _ = handle_event(conn, "reject",
                                 AgentEventIn(execution_id=eid, agent_id=first), utcnow())
    assert answer["outcome"] == "reject_recorded"
    results = at_once([event_in_own_transaction("reject", execution_id=eid, agent_id=a)
                       for a in (second, third)])
    assert sorted(r["outcome"] for r in results) == ["reject_recorded", "rejected"]
    final = next(r for r in results if r["outcome"] == "rejected")
    assert final["merge_field"]["reason"] == "REJECTED"
    assert final["merge_field"]["rejectedBy"][0] == first
    assert sorted(final["merge_field"]["rejectedBy"]) == sorted([first, second, third])
    assert exit_rows(eid) == 1


def _twin(action: str, **fields: str) -> Callable[[threading.Barrier], Any]:
    def work(barrier: threading.Barrier) -> Any:
        barrier.wait(timeout=30)
        answer, _effects = in_transaction(
            lambda conn: handle_event(conn, action, AgentEventIn(**fields), utcnow()))
        return answer

    return work


def stored_events(agent_id: str) -> list[Any]:
    with transaction() as conn:
        return conn.execute(sa.select(agent_events).where(
            agent_events.c.agent_id == agent_id)).all()


def test_two_copies_of_one_event_id_get_one_stored_answer(wide_pool, team):
    (alice,) = add_agents(team, 1)
    eid = start_step(team)
    results = at_once([_twin("claim", execution_id=eid, agent_id=alice, event_id="ev-1")
                       for _ in range(2)])
    assert results[0] == results[1]
    assert results[0]["outcome"] == "claimed"
    (stored,) = stored_events(alice)
    assert stored.result == results[0]
    assert exit_rows(eid) == 1


def test_twin_events_for_nothing_all_answer_not_found_and_store_nothing(wide_pool, team):
    # Nothing waits on this conversation, so no execution row lock serializes the twins; an
    # event on no execution stores no answer (docs/contract.md §8 "Limits"), so they cannot collide.
    (alice,) = add_agents(team, 1)
    for round_ in range(5):
        results = at_once([_twin("claim", conversation_id=f"conv-empty-{uuid.uuid4().hex}",
                                 agent_id=alice, event_id=f"ev-{round_}")
                           for _ in range(THREADS)])
        assert all(r == results[0] for r in results)
        assert results[0]["outcome"] == "not_found"
    assert stored_events(alice) == []


def test_many_copies_of_one_claim_event_id_on_a_live_step(wide_pool, team):
    alice, bob = add_agents(team, 2)
    eid = start_step(team)
    work = [_twin("claim", execution_id=eid, agent_id=alice, event_id="ev-x")
            for _ in range(THREADS // 2)]
    work += [_twin("claim", execution_id=eid, agent_id=bob, event_id="ev-y")
             for _ in range(THREADS // 2)]
    results = at_once(work)
    alices, bobs = results[:THREADS // 2], results[THREADS // 2:]
    assert all(r == alices[0] for r in alices) and all(r == bobs[0] for r in bobs)
    assert sorted([alices[0]["outcome"], bobs[0]["outcome"]]) == ["already_resolved",
                                                                  "claimed"]
    assert len(stored_events(alice)) == 1 and len(stored_events(bob)) == 1
    assert exit_rows(eid) == 1


def test_one_execution_id_sent_for_several_conversations_at_once_starts_once(wide_pool):
    # Given an eligible agent, and one execution_id that a confused flow engine sends for ten
    # different conversations at the same moment (each request locks its own conversation row)
    team = f"team:{uuid.uuid4().hex[:8]}"
    add_agents(team, 1)
    execution_id = f"exec-{uuid.uuid4().hex[:12]}"

    def request(i: int) -> Callable[[threading.Barrier], Any]:
        kwargs = {"execution_id": execution_id, "conversation_id": f"conv-{i}-{execution_id}",
                  "conversation": {"tags": [team]}}
        def work(barrier: threading.Barrier) -> Any:
            barrier.wait()
            return in_transaction(lambda conn: dispatch.submit(
                conn, (), kwargs, task_id=None, now=utcnow(), defaults=DEFAULTS)[0])
        return work

    # When they are dispatched together
    answers = at_once([request(i) for i in range(10)])
    # Then exactly one started the execution and the others are told it already exists
    assert Counter(a["duplicate"] for a in answers) == Counter({False: 1, True: 9})
    assert {(a["state"], a["exit"]) for a in answers} == {("waiting", None)}
    with transaction() as conn:
        waiting = conn.execute(sa.text(
            "SELECT count(*) FROM conversations WHERE status = 'needs_action' "
            "AND conversation_id LIKE :pattern"), {"pattern": f"conv-%-{execution_id}"}).scalar()
    assert waiting == 1
