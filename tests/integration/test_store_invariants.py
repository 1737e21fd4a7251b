"""The database itself refuses what no race may produce (README "How it is built"): plain SQL
against the migrated schema, no repository code in between."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

UNIQUE_VIOLATION = "23505"
CHECK_VIOLATION = "23514"


@pytest.fixture(scope="module")
def engine(database_url: str) -> Iterator[Engine]:
    engine = sa.create_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def ids() -> dict[str, str]:
    token = uuid.uuid4().hex[:10]
    return {"conv": f"conv-inv-{token}", "exec": f"exec-inv-{token}", "agent": f"agent-{token}"}


def run(engine: Engine, sql: str, **params: object) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text(sql), params)


def refused(engine: Engine, sql: str, code: str, **params: object) -> str:
    """Run ``sql`` expecting the database to refuse it; returns the constraint's name."""
    with pytest.raises(sa.exc.IntegrityError) as caught:
        run(engine, sql, **params)
    assert caught.value.orig.pgcode == code, caught.value
    return caught.value.orig.diag.constraint_name


INSERT_EXECUTION = """
    INSERT INTO executions (execution_id, conversation_id, state, exit, requested_at)
    VALUES (:execution_id, :conversation_id, :state, :exit, now())
"""


def add_execution(engine: Engine, execution_id: str, conversation_id: str | None,
                  state: str = "waiting", exit: str | None = None) -> None:
    run(engine, INSERT_EXECUTION, execution_id=execution_id, conversation_id=conversation_id,
        state=state, exit=exit)


# --- one waiting execution per conversation -------------------------------------------------

def test_a_second_waiting_execution_for_one_conversation_is_refused(engine, ids):
    add_execution(engine, f"{ids['exec']}-1", ids["conv"])
    constraint = refused(engine, INSERT_EXECUTION, UNIQUE_VIOLATION,
                         execution_id=f"{ids['exec']}-2", conversation_id=ids["conv"],
                         state="waiting", exit=None)
    assert constraint == "ux_executions_one_waiting_per_conversation"


def test_ended_executions_do_not_count_against_the_one_waiting(engine, ids):
    add_execution(engine, f"{ids['exec']}-1", ids["conv"], "exited", "claimed")
    add_execution(engine, f"{ids['exec']}-2", ids["conv"], "cancelled")
    add_execution(engine, f"{ids['exec']}-3", ids["conv"], "failed", "error")
    add_execution(engine, f"{ids['exec']}-4", ids["conv"])  # the one waiting execution
    # A second one may wait only once the first has left waiting
    constraint = refused(
        engine, "UPDATE executions SET state = 'waiting', exit = NULL "
                "WHERE execution_id = :execution_id",
        UNIQUE_VIOLATION, execution_id=f"{ids['exec']}-2")
    assert constraint == "ux_executions_one_waiting_per_conversation"
    run(engine, "UPDATE executions SET state = 'exited', exit = 'timeout' "
                "WHERE execution_id = :execution_id", execution_id=f"{ids['exec']}-4")
    add_execution(engine, f"{ids['exec']}-5", ids["conv"])


# --- an exit exactly when the execution has ended -------------------------------------------

@pytest.mark.parametrize(("state", "exit"), [
    ("waiting", "claimed"),      # an exit on a waiting row
    ("cancelled", "timeout"),    # a cancelled execution sends no exit
    ("exited", None),            # ended without an exit
    ("failed", None),            # failed leaves by the error exit
])
def test_exit_and_state_must_agree(engine, ids, state, exit):
    constraint = refused(engine, INSERT_EXECUTION, CHECK_VIOLATION,
                         execution_id=ids["exec"], conversation_id=ids["conv"], state=state,
                         exit=exit)
    assert constraint == "ck_executions_exit_iff_ended"


def test_an_exit_cannot_be_written_onto_a_waiting_row(engine, ids):
    add_execution(engine, ids["exec"], ids["conv"])
    constraint = refused(engine, "UPDATE executions SET exit = 'claimed' "
                                 "WHERE execution_id = :execution_id",
                         CHECK_VIOLATION, execution_id=ids["exec"])
    assert constraint == "ck_executions_exit_iff_ended"


@pytest.mark.parametrize(("state", "exit", "constraint"), [
    ("done", None, "ck_executions_state"),
    ("exited", "escaped", "ck_executions_exit"),
])
def test_unknown_states_and_exits_are_refused(engine, ids, state, exit, constraint):
    assert refused(engine, INSERT_EXECUTION, CHECK_VIOLATION, execution_id=ids["exec"],
                   conversation_id=ids["conv"], state=state, exit=exit) == constraint


def test_one_execution_id_is_one_row(engine, ids):
    add_execution(engine, ids["exec"], ids["conv"], "exited", "claimed")
    refused(engine, INSERT_EXECUTION, UNIQUE_VIOLATION, execution_id=ids["exec"],
            conversation_id=f"{ids['conv']}-other", state="exited", exit="timeout")


# --- one outbox row per dedupe key (one exit message per execution) -------------------------

# Marked sent: the session's reconciler must not try to deliver this payload-less row (it
# would fail for ever and show up as a stuck outbox in other tests' `status`).
INSERT_OUTBOX = """
    INSERT INTO outbox (dedupe_key, kind, execution_id, payload, created_at, sent_at)
    VALUES (:key, 'exit', :execution_id, '{}'::jsonb, now(), now())
"""


def test_a_second_outbox_row_with_the_same_dedupe_key_is_refused(engine, ids):
    key = f"exit:{ids['exec']}"
    run(engine, INSERT_OUTBOX, key=key, execution_id=ids["exec"])
    constraint = refused(engine, INSERT_OUTBOX, UNIQUE_VIOLATION, key=key,
                         execution_id=ids["exec"])
    assert constraint == "uq_outbox_dedupe_key"
    with engine.begin() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM outbox WHERE dedupe_key = :key"),
                            {"key": key}).scalar() == 1


# --- one answer per client event id ---------------------------------------------------------

INSERT_AGENT_EVENT = """
    INSERT INTO agent_events (agent_id, event_id, action, execution_id, result, created_at)
    VALUES (:agent_id, :event_id, :action, :execution_id, '{"outcome": "claimed"}'::jsonb, now())
"""


def test_a_second_agent_event_with_the_same_agent_and_event_id_is_refused(engine, ids):
    run(engine, INSERT_AGENT_EVENT, agent_id=ids["agent"], event_id="ev-1", action="claim",
        execution_id=ids["exec"])
    constraint = refused(engine, INSERT_AGENT_EVENT, UNIQUE_VIOLATION, agent_id=ids["agent"],
                         event_id="ev-1", action="reject", execution_id=f"{ids['exec']}-b")
    assert constraint == "pk_agent_events"
    # The same event id from another agent is another event
    run(engine, INSERT_AGENT_EVENT, agent_id=f"{ids['agent']}-2", event_id="ev-1",
        action="claim", execution_id=ids["exec"])


# --- the small vocabularies -----------------------------------------------------------------

def test_offers_timers_agents_and_conversations_keep_to_their_vocabularies(engine, ids):
    add_execution(engine, ids["exec"], ids["conv"])
    refused(engine, "INSERT INTO offers (execution_id, agent_id, status, updated_at) "
                    "VALUES (:e, 'a', 'maybe', now())", CHECK_VIOLATION, e=ids["exec"])
    refused(engine, "INSERT INTO timers (execution_id, kind, due_at, state) "
                    "VALUES (:e, 'egg', now(), 'pending')", CHECK_VIOLATION, e=ids["exec"])
    refused(engine, "INSERT INTO agents (agent_id, status, rule_groups, updated_at) "
                    "VALUES (:a, 'asleep', '[]'::jsonb, now())", CHECK_VIOLATION,
            a=ids["agent"])
    refused(engine, "INSERT INTO conversations (conversation_id, status, tags, claimed_by, "
                    "updated_at) VALUES (:c, 'lost', '[]'::jsonb, '[]'::jsonb, now())",
            CHECK_VIOLATION, c=ids["conv"])


# --- at most one holder of a sequential offer (§9) -------------------------------------------

INSERT_OFFER = """
    INSERT INTO offers (execution_id, agent_id, status, round, updated_at)
    VALUES (:execution_id, :agent_id, :status, :round, now())
"""


def test_a_second_holder_of_a_sequential_offer_is_refused(engine, ids):
    add_execution(engine, ids["exec"], ids["conv"])
    run(engine, INSERT_OFFER, execution_id=ids["exec"], agent_id="alice", status="closed",
        round=1)
    constraint = refused(engine, INSERT_OFFER, UNIQUE_VIOLATION, execution_id=ids["exec"],
                         agent_id="bob", status="offered", round=2)
    assert constraint == "ux_offers_one_holder"
    # Passed on: the first one missed, then the next one holds it
    run(engine, "UPDATE offers SET status = 'missed' WHERE execution_id = :e AND "
                "agent_id = 'alice'", e=ids["exec"])
    run(engine, INSERT_OFFER, execution_id=ids["exec"], agent_id="bob", status="offered",
        round=1)


def test_broadcast_offers_have_no_round_and_no_holder_limit(engine, ids):
    add_execution(engine, ids["exec"], ids["conv"])
    for agent_id in ("alice", "bob"):
        run(engine, INSERT_OFFER, execution_id=ids["exec"], agent_id=agent_id,
            status="offered", round=None)


def test_an_unknown_offer_status_or_timer_kind_is_refused(engine, ids):
    add_execution(engine, ids["exec"], ids["conv"])
    assert refused(engine, INSERT_OFFER, CHECK_VIOLATION, execution_id=ids["exec"],
                   agent_id="alice", status="ignored", round=1) == "ck_offers_status"
    # (cancelled: a pending offer timer on this bare execution is not for the workers)
    run(engine, "INSERT INTO timers (execution_id, kind, due_at, state) "
                "VALUES (:e, 'offer', now(), 'cancelled')", e=ids["exec"])
    assert refused(engine, "INSERT INTO timers (execution_id, kind, due_at, state) "
                           "VALUES (:e, 'nudge', now(), 'pending')", CHECK_VIOLATION,
                   e=ids["exec"]) == "ck_timers_kind"
