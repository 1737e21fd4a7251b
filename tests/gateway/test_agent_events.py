"""Claim, reject and close over HTTP: the §3 outcome, with the §8 status code."""

from __future__ import annotations

import uuid

import pytest

from tests.gateway.harness import bearer

RESULT_KEYS = {"outcome", "execution_id", "state", "exit", "merge_field"}


def post(api, action, execution_id, agent, **body):
    return api.post(f"/executions/{execution_id}/{action}", headers=bearer(agent),
                    json=body or None)


def test_claim_wins_then_repeats_and_losers_hear_who_won(api, agents, waiting, flow):
    # Given a step offered to Alice and Bob
    alice, bob = agents(), agents()
    step = waiting()
    eid = step["execution_id"]
    # When Alice claims
    won = post(api, "claim", eid, alice)
    # Then 200 claimed, the §3 result, and the flow engine gets the exit
    assert won.status_code == 200
    assert won.json() == {"outcome": "claimed", "execution_id": eid, "state": "exited",
                          "exit": "claimed", "merge_field": {"addClaimedBy": alice}}
    assert flow.wait_for(eid)["merge_field"] == {"addClaimedBy": alice}
    # A repeat by the winner is 200 already_claimed
    again = post(api, "claim", eid, alice)
    assert again.status_code == 200 and again.json()["outcome"] == "already_claimed"
    # Bob is too late: 409, the result fields, and a detail naming the winner
    lost = post(api, "claim", eid, bob)
    assert lost.status_code == 409
    body = lost.json()
    assert set(body) >= RESULT_KEYS
    assert body["outcome"] == "already_resolved"
    assert body["merge_field"] == {"addClaimedBy": alice}
    assert f"claimed by {alice}" in body["detail"]
    # And the flow engine saw one exit
    assert flow.count_for(eid) == 1


def test_reject_ends_the_step_rejected(api, agents, waiting, flow):
    alice = agents()
    step = waiting()
    response = post(api, "reject", step["execution_id"], alice)
    assert response.status_code == 200
    assert response.json()["outcome"] == "rejected"
    exit_message = flow.wait_for(step["execution_id"])
    assert exit_message["exit"] == "not_claimed"
    assert exit_message["merge_field"] == {"reason": "REJECTED", "rejectedBy": [alice]}


def test_reject_under_policy_all_is_recorded_until_everyone_rejected(api, agents, waiting):
    alice, bob = agents(), agents()
    step = waiting(reject_policy="all")
    first = post(api, "reject", step["execution_id"], alice)
    assert first.status_code == 200 and first.json()["outcome"] == "reject_recorded"
    last = post(api, "reject", step["execution_id"], bob)
    assert last.status_code == 200 and last.json()["outcome"] == "rejected"


def test_close_dismisses_then_after_the_end_is_409(api, agents, waiting):
    alice, bob = agents(), agents()
    step = waiting()
    closed = post(api, "close", step["execution_id"], alice)
    assert closed.status_code == 200
    assert closed.json() == {"outcome": "closed", "execution_id": step["execution_id"],
                             "state": "waiting", "exit": None, "merge_field": None}
    assert post(api, "claim", step["execution_id"], bob).status_code == 200
    late = post(api, "close", step["execution_id"], alice)
    assert late.status_code == 409 and late.json()["outcome"] == "already_resolved"


def test_not_eligible_is_403_with_the_result(api, agents, waiting):
    agents()  # a team member, so the step waits
    outsider = agents(groups=[["team:elsewhere"]])
    step = waiting()
    response = post(api, "claim", step["execution_id"], outsider)
    assert response.status_code == 403
    body = response.json()
    assert body["outcome"] == "not_eligible" and body["execution_id"] == step["execution_id"]
    assert body["state"] == "waiting" and body["detail"]


def test_busy_agent_may_not_claim_unless_allowed(api, agents, waiting):
    busy = agents(status="busy")
    agents()  # someone available, so the step waits
    refused = post(api, "claim", waiting()["execution_id"], busy)
    assert refused.status_code == 403
    allowed = post(api, "claim", waiting(allow_busy=True)["execution_id"], busy)
    assert allowed.status_code == 200


@pytest.mark.parametrize("action", ["claim", "reject", "close"])
def test_unknown_execution_is_404(api, agents, action):
    response = post(api, action, f"exec-missing-{uuid.uuid4().hex[:6]}", agents())
    assert response.status_code == 404
    assert response.json()["outcome"] == "not_found" and response.json()["detail"]


def test_repeated_event_id_answers_the_first_answer_verbatim(api, agents, waiting):
    alice, bob = agents(), agents()
    first_step, second_step = waiting(), waiting()
    event_id = f"ev-{uuid.uuid4().hex[:8]}"
    first = post(api, "close", first_step["execution_id"], alice, event_id=event_id)
    assert first.json()["outcome"] == "closed"
    post(api, "claim", first_step["execution_id"], bob)
    # The same event id again: the stored answer, though the step has since ended
    repeat = post(api, "close", first_step["execution_id"], alice, event_id=event_id)
    assert repeat.status_code == 200 and repeat.json() == first.json()
    assert second_step  # untouched


def test_path_ids_are_percent_decoded(api, agents, client, team, flow):
    from tests.support.steps import request

    alice = agents()
    eid = f"flow:{uuid.uuid4().hex[:6]}:step@1"
    client.call("hitl.request_assistance", **request(team, flow.reply_to, execution_id=eid))
    encoded = eid.replace(":", "%3A").replace("@", "%40")
    response = api.post(f"/executions/{encoded}/claim", headers=bearer(alice))
    assert response.status_code == 200
    assert response.json()["execution_id"] == eid


def test_agent_ids_in_paths_are_percent_decoded(api, client, team):
    agent_id = f"agent:{uuid.uuid4().hex[:6]}@team"
    client.call("hitl.upsert_agent", agent_id=agent_id, status="available",
                rule_groups=[[team]])
    try:
        encoded = agent_id.replace(":", "%3A").replace("@", "%40")
        response = api.put(f"/agents/{encoded}/status", headers=bearer(agent_id),
                           json={"status": "busy"})
        assert response.status_code == 200
        assert response.json() == {"agent_id": agent_id, "status": "busy"}
    finally:
        client.call("hitl.remove_agent", agent_id=agent_id)


MALFORMED = [
    ("unknown field", {"json": {"event_id": "e-1", "evil": True}}, "evil"),
    ("wrong type", {"json": {"event_id": 5}}, "event_id"),
    ("not an id", {"json": {"event_id": "has spaces"}}, "event_id"),
    ("not an object", {"json": ["event_id"]}, "body"),
    ("invalid JSON", {"content": b'{"event_id": ', "headers": {"content-type":
                                                                "application/json"}},
     "invalid JSON"),
    ("not JSON", {"content": b"event_id=1", "headers": {"content-type": "text/plain"}},
     "body"),
]


@pytest.mark.parametrize(("case", "kwargs", "mentions"), MALFORMED, ids=[m[0] for m in MALFORMED])
@pytest.mark.parametrize("action", ["claim", "reject", "close"])
def test_malformed_event_bodies_are_422_and_change_nothing(api, agents, waiting, action, case,
                                                           kwargs, mentions):
    kwargs = dict(kwargs)
    alice = agents()
    step = waiting()
    headers = {**bearer(alice), **kwargs.pop("headers", {})}
    response = api.post(f"/executions/{step['execution_id']}/{action}", headers=headers,
                        **kwargs)
    assert response.status_code == 422, response.text
    body = response.json()
    assert isinstance(body["detail"], str) and mentions in body["detail"]
    assert body["errors"]
    bell = api.get(f"/agents/{alice}/requests", headers=bearer(alice)).json()
    assert [e["execution_id"] for e in bell] == [step["execution_id"]]


@pytest.mark.parametrize("bad", ["has%20space", "x" * 129])
def test_malformed_execution_id_in_the_path_is_422(api, agents, bad):
    response = api.post(f"/executions/{bad}/claim", headers=bearer(agents()))
    assert response.status_code == 422
    assert "execution_id" in response.json()["detail"]


def test_status_put(api, agents, waiting):
    alice = agents()
    step = waiting()
    assert api.get(f"/agents/{alice}/requests", headers=bearer(alice)).json()
    # When Alice goes busy, the step (busy not allowed) leaves her bell list
    response = api.put(f"/agents/{alice}/status", headers=bearer(alice), json={"status": "busy"})
    assert response.status_code == 200
    assert response.json() == {"agent_id": alice, "status": "busy"}
    assert api.get(f"/agents/{alice}/requests", headers=bearer(alice)).json() == []
    assert api.get("/me", headers=bearer(alice)).json()["status"] == "busy"
    # And back
    api.put(f"/agents/{alice}/status", headers=bearer(alice), json={"status": "available"})
    bell = api.get(f"/agents/{alice}/requests", headers=bearer(alice)).json()
    assert [e["execution_id"] for e in bell] == [step["execution_id"]]


@pytest.mark.parametrize("kwargs", [
    {"json": {"status": "sleeping"}},
    {"json": {"status": "busy", "extra": 1}},
    {"json": {}},
    {"json": {"status": 1}},
    {"content": b"{", "headers": {"content-type": "application/json"}},
], ids=["unknown status", "unknown field", "missing", "wrong type", "invalid JSON"])
def test_malformed_status_bodies_are_422(api, agents, kwargs):
    kwargs = dict(kwargs)
    alice = agents()
    headers = {**bearer(alice), **kwargs.pop("headers", {})}
    response = api.put(f"/agents/{alice}/status", headers=headers, **kwargs)
    assert response.status_code == 422, response.text
    assert isinstance(response.json()["detail"], str)
    assert api.get("/me", headers=bearer(alice)).json()["status"] == "available"


def test_a_token_of_an_agent_not_in_the_directory_is_401(api):
    # A removed agent's row is gone, so a never-created agent looks the same: its token,
    # however well signed, acts as nobody (§8 "a token stops working when its agent is
    # removed").
    ghost = f"agent-ghost-{uuid.uuid4().hex[:6]}"
    response = api.put(f"/agents/{ghost}/status", headers=bearer(ghost),
                       json={"status": "busy"})
    assert response.status_code == 401
    assert ghost in response.json()["detail"]
