"""A flow engine that speaks only HTTP (docs/contract.md §10): it keeps the directory and starts
steps over /v1 with a service token, agents act over the §8 routes with their own tokens, and
the flow engine learns each exit by polling ``GET /v1/executions/{id}`` — no Celery, no reply
queue read."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.gateway.flow_http import HttpFlowEngine
from tests.gateway.harness import bearer


def _step(team: str, **settings: object) -> dict[str, object]:
    # No reply_to: the exit message goes to the default reply queue, which this flow engine
    # never reads; it polls instead.
    return {"execution_id": f"http-flow:{uuid.uuid4().hex[:10]}",
            "conversation_id": f"conv-{uuid.uuid4().hex[:10]}",
            "conversation": {"tags": [team], "contact": {"name": "Ada"}},
            "settings": {"timeout": "5m", **settings}}


@pytest.fixture
def engine(gateway):
    with HttpFlowEngine(gateway.url) as flow_engine:
        yield flow_engine


@pytest.fixture
def http_agent(engine, team):
    """``http_agent() -> agent_id``: an available agent of the team, added over /v1."""
    made: list[str] = []

    def make() -> str:
        agent = f"agent-{uuid.uuid4().hex[:10]}"
        response = engine.http.put(f"/v1/agents/{agent}",
                                   json={"status": "available", "rule_groups": [[team]]})
        assert response.status_code == 200, response.text
        made.append(agent)
        return agent

    yield make
    for agent in made:
        engine.http.delete(f"/v1/agents/{agent}")


def test_a_claim_over_the_agent_route_is_seen_by_polling(engine, http_agent, team, gateway):
    # Given an agent added over HTTP and a step started over HTTP
    alice = http_agent()
    step = _step(team)
    assert engine.start(step).status_code == 201
    # When the agent claims over the §8 route with its own token
    with httpx.Client(base_url=gateway.url, timeout=30) as agent_ui:
        claimed = agent_ui.post(f"/executions/{step['execution_id']}/claim",
                                headers=bearer(alice))
    assert claimed.status_code == 200, claimed.text
    # Then the flow engine sees the exit by polling
    view = engine.wait_for_end(str(step["execution_id"]))
    assert view["state"] == "exited" and view["exit"] == "claimed"
    assert view["merge_field"] == {"addClaimedBy": alice}
    assert view["ended_at"] is not None and view["ended_at"] >= view["dispatched_at"]
    assert [offer["agent_id"] for offer in view["offers"]] == [alice]


@pytest.mark.parametrize(("settings", "exit", "merge_field"), [
    ({"timeout": "1s"}, "timeout", {}),
    ({"popup": {"text": "hi", "timer": {"auto_action_timeout": "1s"}}}, "timer_action", {}),
])
def test_deadlines_are_seen_by_polling(engine, http_agent, team, settings, exit, merge_field):
    http_agent()
    step = _step(team, **settings)
    assert engine.start(step).status_code == 201
    view = engine.wait_for_end(str(step["execution_id"]))
    assert (view["state"], view["exit"], view["merge_field"]) == ("exited", exit, merge_field)


def test_a_reject_over_the_agent_route_is_seen_by_polling(engine, http_agent, team, gateway):
    bob = http_agent()
    step = _step(team)
    assert engine.start(step).status_code == 201
    with httpx.Client(base_url=gateway.url, timeout=30) as agent_ui:
        rejected = agent_ui.post(f"/executions/{step['execution_id']}/reject",
                                 headers=bearer(bob))
    assert rejected.status_code == 200, rejected.text
    view = engine.wait_for_end(str(step["execution_id"]))
    assert view["exit"] == "not_claimed"
    assert view["merge_field"] == {"reason": "REJECTED", "rejectedBy": [bob]}
    assert view["offers"] == [{"agent_id": bob, "status": "rejected"}]


def test_not_available_and_error_are_answered_at_once(engine, http_agent, team):
    agent = http_agent()
    assert engine.http.put(f"/v1/agents/{agent}/status", json={"status": "busy"}).json() == {
        "agent_id": agent, "status": "busy"}
    step = _step(team)
    started = engine.start(step)
    assert started.status_code == 201 and started.json()["exit"] == "not_claimed"
    assert engine.status(str(step["execution_id"])).json()["merge_field"] == {
        "reason": "NOT_AVAILABLE"}
    bad = _step(team, timeout="forever")
    refused = engine.start(bad)
    assert refused.status_code == 422 and refused.json()["fields"] == ["settings.timeout"]
    view = engine.status(str(bad["execution_id"])).json()
    assert (view["state"], view["exit"]) == ("failed", "error")
    assert view["merge_field"]["error"]["fields"] == ["settings.timeout"]
    assert view["dispatched_at"] is None


# --- webhook exits (§10): the exit comes to the flow engine instead of being polled ----------

def test_the_exit_of_a_claim_over_http_arrives_at_the_webhook(engine, http_agent, team,
                                                              gateway):
    import os

    from tests.support.webhook_receiver import Receiver

    # A receiver that answers its first POST 500, then 200 (issue 11: delivered once, retried
    # once)
    with Receiver(os.environ["HITL_WEBHOOK_SECRET"],
                  answer=lambda n: 500 if n == 1 else 200) as receiver:
        # Given a step started over /v1 whose reply_to is the flow engine's webhook
        alice = http_agent()
        step = {**_step(team), "reply_to": {"webhook": receiver.url()}}
        assert engine.start(step).status_code == 201
        # When the agent claims over the §8 route
        with httpx.Client(base_url=gateway.url, timeout=30) as agent_ui:
            claimed = agent_ui.post(f"/executions/{step['execution_id']}/claim",
                                    headers=bearer(alice))
        assert claimed.status_code == 200, claimed.text
        # Then the exit is POSTed to the webhook, signed, and reaches its logic once
        exit_kwargs = receiver.wait_for(str(step["execution_id"]))
        assert (exit_kwargs["exit"], exit_kwargs["merge_field"]) == (
            "claimed", {"addClaimedBy": alice})
        assert [(p.answered, p.signature_ok) for p in receiver.posts] == [
            (500, True), (200, True)]
        assert receiver.handed_to_logic == 1
        # and a retry of the same start is still a retry (200), not a clash
        assert engine.start(step).status_code == 200


def test_a_webhook_host_not_allowed_is_a_422_naming_reply_to_webhook(engine, team):
    step = {**_step(team), "reply_to": {"webhook": "https://hooks.example.com/exit"}}
    refused = engine.start(step)
    assert refused.status_code == 422, refused.text
    assert refused.json()["fields"] == ["reply_to.webhook"]
    assert "not allowed" in refused.json()["message"]
    view = engine.status(str(step["execution_id"])).json()
    assert (view["state"], view["exit"]) == ("failed", "error")
