"""Capacity (docs/contract.md §9) decided by PostgreSQL: the check and the claim are one
atomic decision, and a release never loses to a claim's write of ``claimed_by``."""

from __future__ import annotations

import uuid
from collections import Counter

import pytest

from hitl_workers.clock import utcnow
from hitl_workers.services import agents as directory
from hitl_workers.services import dispatch
from hitl_workers.services.agent_events import AgentEventIn, handle_event
from hitl_workers.store import repo
from hitl_workers.store.db import transaction
from tests.integration.test_service_races import (
    DEFAULTS,
    at_once,
    event_in_own_transaction,
    exit_rows,
    wide_pool,  # noqa: F401 (a fixture)
)


@pytest.fixture
def team() -> str:
    return f"team:cap-{uuid.uuid4().hex[:8]}"


def add_agent(team: str, capacity: int | None) -> str:
    agent_id = f"agent-{uuid.uuid4().hex[:10]}"
    with transaction() as conn:
        directory.upsert_agent(conn, directory.UpsertAgentIn(
            agent_id=agent_id, status="available", rule_groups=[[team]], capacity=capacity),
            utcnow())
    return agent_id


def start_step(team: str, conversation_id: str | None = None) -> str:
    execution_id = f"exec-{uuid.uuid4().hex[:12]}"
    kwargs = {"execution_id": execution_id,
              "conversation_id": conversation_id or f"conv-{uuid.uuid4().hex[:12]}",
              "conversation": {"tags": [team]}, "settings": {}}
    with transaction() as conn:
        answer, _effects = dispatch.submit(conn, (), kwargs, task_id=None, now=utcnow(),
                                           defaults=DEFAULTS)
    assert answer["state"] == "waiting", answer
    return execution_id


def claim(eid: str, agent_id: str) -> dict[str, object]:
    with transaction() as conn:
        answer, _ = handle_event(conn, "claim", AgentEventIn(execution_id=eid,
                                                            agent_id=agent_id), utcnow())
    return answer


def holding(agent_id: str) -> int:
    with transaction() as conn:
        return repo.loads(conn).get(agent_id, 0)


@pytest.mark.parametrize("round_", range(5))
@pytest.mark.usefixtures("wide_pool")
def test_two_claims_racing_for_an_agents_last_slot_make_exactly_one_winner(team, round_):
    # Given an agent with capacity 2 that already holds one conversation
    alice = add_agent(team, 2)
    assert claim(start_step(team), alice)["outcome"] == "claimed"
    # When it claims two other waiting steps at the same moment
    first, second = start_step(team), start_step(team)
    results = at_once([event_in_own_transaction("claim", execution_id=eid, agent_id=alice)
                       for eid in (first, second)])
    # Then exactly one claim wins, the other answers at_capacity and changes nothing
    assert Counter(r["outcome"] for r in results) == {"claimed": 1, "at_capacity": 1}
    lost = next(r for r in results if r["outcome"] == "at_capacity")
    assert (lost["state"], lost["exit"], lost["merge_field"]) == ("waiting", None, None)
    assert holding(alice) == 2
    assert sorted([exit_rows(first), exit_rows(second)]) == [0, 1]


@pytest.mark.usefixtures("wide_pool")
def test_ten_claims_by_one_agent_with_capacity_three_win_three(team):
    alice = add_agent(team, 3)
    steps = [start_step(team) for _ in range(10)]
    results = at_once([event_in_own_transaction("claim", execution_id=eid, agent_id=alice)
                       for eid in steps])
    assert Counter(r["outcome"] for r in results) == {"claimed": 3, "at_capacity": 7}
    assert holding(alice) == 3


@pytest.mark.usefixtures("wide_pool")
def test_agents_without_capacity_claim_as_many_as_they_like_at_once(team):
    alice = add_agent(team, None)
    steps = [start_step(team) for _ in range(8)]
    results = at_once([event_in_own_transaction("claim", execution_id=eid, agent_id=alice)
                       for eid in steps])
    assert Counter(r["outcome"] for r in results) == {"claimed": 8}


@pytest.mark.parametrize("round_", range(5))
@pytest.mark.usefixtures("wide_pool")
def test_a_release_racing_a_claim_on_the_same_conversation_is_not_lost(team, round_):
    # Given a conversation claimed by bob, with a new step waiting on it
    bob, carol = add_agent(team, None), add_agent(team, None)
    conversation_id = f"conv-{uuid.uuid4().hex[:12]}"
    assert claim(start_step(team, conversation_id=conversation_id), bob)["outcome"] == "claimed"
    eid = start_step(team, conversation_id=conversation_id)

    def release(barrier):
        with transaction() as conn:
            barrier.wait(timeout=30)
            return directory.release(conn, directory.ReleaseIn(
                conversation_id=conversation_id, agent_id=bob), utcnow())[0]

    # When bob is released while carol claims the new step
    at_once([release, event_in_own_transaction("claim", execution_id=eid, agent_id=carol)])
    # Then the conversation is held by carol alone, whichever committed first
    with transaction() as conn:
        assert repo.get_conversation(conn, conversation_id).claimed_by == [carol]
