"""Agent event ids (docs/contract.md §3, §8 "Limits"): a repeat answers the first answer verbatim,
key order included; a reuse for another action or target is refused and changes nothing; an
event on no execution stores nothing. Real PostgreSQL, committed transactions."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import sqlalchemy as sa

from hitl_workers.clock import utcnow
from hitl_workers.services import agents as directory
from hitl_workers.services import dispatch
from hitl_workers.services.agent_events import AgentEventIn, handle_event
from hitl_workers.store import repo
from hitl_workers.store.db import transaction
from hitl_workers.store.tables import agent_events, conversations
from hitl_workers.tasks.common import in_transaction

DEFAULTS = dispatch.Defaults("flow.step_exited", "flow-integration", timer_horizon_s=600)


@pytest.fixture(autouse=True)
def _database(database_url: str) -> None:
    """The session's fresh, migrated database (this module may be the first to use it)."""


def _team() -> str:
    return f"team:ev-{uuid.uuid4().hex[:8]}"


def _agent(team: str) -> str:
    agent_id = f"agent-{uuid.uuid4().hex[:10]}"
    with transaction() as conn:
        directory.upsert_agent(conn, directory.UpsertAgentIn(
            agent_id=agent_id, status="available", rule_groups=[[team]]), utcnow())
    return agent_id


def _step(team: str, *, contact: dict[str, Any] | None = None, **settings: Any) -> str:
    execution_id = f"exec-{uuid.uuid4().hex[:12]}"
    kwargs = {"execution_id": execution_id, "conversation_id": f"conv-{execution_id}",
              "conversation": {"tags": [team], "contact": contact or {"name": "Ann"}},
              "settings": settings}
    with transaction() as conn:
        answer, _ = dispatch.submit(conn, (), kwargs, task_id=None, now=utcnow(),
                                    defaults=DEFAULTS)
    assert answer["state"] == "waiting", answer
    return execution_id


def _event(action: str, **fields: str) -> dict[str, Any]:
    answer, _effects = in_transaction(
        lambda conn: handle_event(conn, action, AgentEventIn(**fields), utcnow()))
    return answer


def _stored(agent_id: str) -> list[Any]:
    with transaction() as conn:
        return conn.execute(sa.select(agent_events).where(
            agent_events.c.agent_id == agent_id)).all()


def test_a_repeated_event_id_answers_the_first_answer_with_its_keys_in_order():
    team = _team()
    alice, bob = _agent(team), _agent(team)
    eid = _step(team, reject_policy="all")
    _event("reject", execution_id=eid, agent_id=bob)
    first = _event("reject", execution_id=eid, agent_id=alice, event_id="click-1")
    assert first["outcome"] == "rejected"
    repeat = _event("reject", execution_id=eid, agent_id=alice, event_id="click-1")
    assert repeat == first
    assert list(repeat) == list(first) == ["outcome", "execution_id", "state", "exit",
                                           "merge_field"]
    assert list(repeat["merge_field"]) == ["reason", "rejectedBy"]


def test_an_event_id_reused_for_another_execution_is_refused_and_changes_nothing():
    team = _team()
    alice = _agent(team)
    first_step, second_step = _step(team), _step(team)
    assert _event("claim", execution_id=first_step, agent_id=alice,
                  event_id="1")["outcome"] == "claimed"

    reused = _event("claim", execution_id=second_step, agent_id=alice, event_id="1")

    assert reused["outcome"] == "invalid"
    assert reused["execution_id"] == second_step
    assert reused["error"]["code"] == "event_id_reused"
    assert first_step in reused["error"]["message"]  # it names the first use
    with transaction() as conn:
        assert repo.get_execution(conn, second_step).state == "waiting"
    assert len(_stored(alice)) == 1
    # ... and the first use still answers as it did
    assert _event("claim", execution_id=first_step, agent_id=alice,
                  event_id="1")["outcome"] == "claimed"


def test_an_event_id_reused_for_another_action_is_refused_and_changes_nothing():
    team = _team()
    alice, bob = _agent(team), _agent(team)
    eid = _step(team)
    assert _event("close", execution_id=eid, agent_id=alice, event_id="7")["outcome"] == "closed"

    reused = _event("claim", execution_id=eid, agent_id=alice, event_id="7")

    assert (reused["outcome"], reused["error"]["code"]) == ("invalid", "event_id_reused")
    assert "close" in reused["error"]["message"]
    with transaction() as conn:
        assert repo.get_execution(conn, eid).state == "waiting"
    assert _event("claim", execution_id=eid, agent_id=bob)["outcome"] == "claimed"


def test_an_event_on_no_execution_stores_nothing():
    alice = _agent(_team())
    answer = _event("claim", execution_id=f"exec-missing-{uuid.uuid4().hex}", agent_id=alice,
                    event_id="e1")
    assert answer["outcome"] == "not_found"
    assert _stored(alice) == []


def test_the_contact_is_stored_with_its_keys_in_the_order_sent():
    contact = {"name": "Ann", "email": "ann@example.com", "a": 1, "zeta": {"y": 1, "b": 2}}
    team = _team()
    _agent(team)
    eid = _step(team, contact=contact)
    with transaction() as conn:
        stored = conn.execute(sa.select(conversations.c.contact).where(
            conversations.c.conversation_id == f"conv-{eid}")).scalar_one()
    assert list(stored) == list(contact) and list(stored["zeta"]) == ["y", "b"]
