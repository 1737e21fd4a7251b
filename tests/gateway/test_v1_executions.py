"""Starting, reading and cancelling step executions over HTTP (docs/contract.md §10): the §1/§4
results with 201 / 200 / 409 / 422 / 404, and nothing done twice."""

from __future__ import annotations

import time
import uuid

from tests.support.steps import execution, request

START_KEYS = {"execution_id", "state", "exit", "duplicate"}
VIEW_KEYS = {"execution_id", "conversation_id", "state", "exit", "merge_field", "dispatched_at",
             "ended_at", "offers"}


def test_start_is_201_and_the_same_request_again_is_200_with_one_offer(
        service_api, agents, team, flow, streams):
    # Given an available agent of the team
    alice = agents()
    step = request(team, flow.reply_to, timeout="5m")
    # When a flow engine starts the step over HTTP
    first = service_api.post("/v1/executions", json=step)
    # Then 201 and the §1 result
    assert first.status_code == 201, first.text
    assert first.json() == {"execution_id": step["execution_id"], "state": "waiting",
                            "exit": None, "duplicate": False}
    # When it sends the very same request again (a retry after a lost answer)
    again = service_api.post("/v1/executions", json=step)
    # Then 200, duplicate, and still one execution with one notification round
    assert again.status_code == 200, again.text
    assert again.json() == {"execution_id": step["execution_id"], "state": "waiting",
                            "exit": None, "duplicate": True}
    time.sleep(0.5)
    offered = [e for e in streams.events(alice)
               if e["type"] == "assistance.requested"
               and e["execution_id"] == step["execution_id"]]
    assert len(offered) == 1


def test_the_same_request_written_differently_is_still_a_retry(service_api, agents, team, flow):
    # Given a step started with its keys in one order and the timeout as "5m"
    agents()
    step = request(team, flow.reply_to, timeout="5m")
    assert service_api.post("/v1/executions", json=step).status_code == 201
    # When the same request comes with its keys reversed and the timeout as 300 seconds
    same = dict(reversed(list(step.items())))
    same["settings"] = {"timeout": 300}
    retry = service_api.post("/v1/executions", json=same)
    # Then it is the same request: 200
    assert retry.status_code == 200, retry.text
    assert retry.json()["duplicate"] is True


def test_a_different_request_under_an_existing_execution_id_is_409(service_api, agents, team,
                                                                   flow):
    # Given a waiting step
    agents()
    step = request(team, flow.reply_to)
    assert service_api.post("/v1/executions", json=step).status_code == 201
    # When another request comes under the same execution_id
    other = {**step, "conversation_id": f"conv-{uuid.uuid4().hex[:8]}",
             "settings": {"allow_busy": True}}
    clash = service_api.post("/v1/executions", json=other)
    # Then 409 with a detail and the execution as it stands, and nothing changed
    assert clash.status_code == 409, clash.text
    body = clash.json()
    assert "different request" in body["detail"]
    assert body["execution_id"] == step["execution_id"] and body["state"] == "waiting"
    assert execution(step["execution_id"]).conversation_id == step["conversation_id"]
    # And an invalid request under that id is a clash too (it is not what was recorded)
    invalid = service_api.post("/v1/executions", json={**step, "settings": {"timeout": "-1"}})
    assert invalid.status_code == 409, invalid.text
    assert execution(step["execution_id"]).state == "waiting"


def test_a_request_sent_over_celery_then_over_http_compares_the_same_way(
        service_api, client, agents, team, flow):
    # Given a step started by a Celery flow engine
    agents()
    step = request(team, flow.reply_to, timeout="2m")
    assert client.call("hitl.request_assistance", **step)["duplicate"] is False
    # When the same request is repeated over HTTP: a retry
    retry = service_api.post("/v1/executions", json=step)
    assert retry.status_code == 200, retry.text
    assert retry.json() == {"execution_id": step["execution_id"], "state": "waiting",
                            "exit": None, "duplicate": True}
    # And another body under that id: a clash
    other = {**step, "settings": {"timeout": "3m"}}
    assert service_api.post("/v1/executions", json=other).status_code == 409


def test_an_invalid_request_is_422_recorded_failed_and_its_exit_sent(service_api, team, flow):
    # Given a request with a negative timeout and a misspelt setting
    step = request(team, flow.reply_to, timeout="-5s", alow_busy=True)
    # When it is sent over HTTP
    response = service_api.post("/v1/executions", json=step)
    # Then 422 with the error's code, message and fields
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["code"] == "invalid_request"
    assert set(body["fields"]) == {"settings.timeout", "settings.alow_busy"}
    assert "settings.alow_busy" in body["message"] and body["detail"]
    assert body["execution_id"] == step["execution_id"] and body["state"] == "failed"
    # And the execution is recorded failed, and the flow engine gets exit error
    row = execution(step["execution_id"])
    assert (row.state, row.exit) == ("failed", "error")
    exit_message = flow.wait_for(step["execution_id"])
    assert exit_message["exit"] == "error"
    assert exit_message["merge_field"]["error"]["fields"] == body["fields"]
    # When it is sent again: 422 again, still one exit
    again = service_api.post("/v1/executions", json=step)
    assert again.status_code == 422 and again.json()["duplicate"] is True
    # And a valid request under that id now is a clash, not a fresh start
    fixed = {**step, "settings": {"timeout": "5s"}}
    assert service_api.post("/v1/executions", json=fixed).status_code == 409
    time.sleep(0.5)
    assert flow.count_for(step["execution_id"]) == 1


def test_a_request_over_64_kib_is_still_recorded_failed_and_a_huge_one_is_413(
        service_api, team, flow):
    # Given a request of about 100 KB: over the agent routes' 64 KiB, under §1's 256 KiB
    step = request(team, flow.reply_to, popup={"text": "x" * 100_000})
    # When it is sent over HTTP
    response = service_api.post("/v1/executions", json=step)
    # Then the worker judged it (the popup text is over 20,000 characters): 422, recorded failed
    assert response.status_code == 422, response.text
    assert response.json()["fields"] == ["settings.popup.text"]
    assert execution(step["execution_id"]).state == "failed"
    # And a body of 600 KB is refused before it is read
    huge = request(team, flow.reply_to, popup={"text": "x" * 600_000})
    assert service_api.post("/v1/executions", json=huge).status_code == 413
    assert execution(huge["execution_id"]) is None


def test_a_request_without_an_execution_id_is_422_with_no_execution(service_api, team, flow):
    step = request(team, flow.reply_to)
    del step["execution_id"]
    response = service_api.post("/v1/executions", json=step)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["code"] == "invalid_request" and body["fields"] == ["execution_id"]
    assert body["execution_id"] is None


def test_a_body_that_is_not_a_json_object_is_422_and_not_sent(service_api):
    for content in (b"[1, 2]", b"{not json", b""):
        response = service_api.post("/v1/executions", content=content,
                                    headers={"Content-Type": "application/json"})
        assert response.status_code == 422, (content, response.text)
        assert response.json()["detail"]


def test_a_body_key_named_task_is_an_unknown_field_not_a_crash(service_api, team, flow):
    # "task" is also the bridge's own parameter name: it must reach the worker as a field
    step = {**request(team, flow.reply_to), "task": "x"}
    response = service_api.post("/v1/executions", json=step)
    assert response.status_code == 422, response.text
    assert response.json()["fields"] == ["task"]


def test_no_agents_exits_at_dispatch_201_and_status_shows_it(service_api, uid, flow):
    # Given a conversation nobody may see
    step = request(f"team:{uid('nobody')}", flow.reply_to)
    started = service_api.post("/v1/executions", json=step)
    assert started.status_code == 201
    assert started.json() == {"execution_id": step["execution_id"], "state": "exited",
                              "exit": "not_claimed", "duplicate": False}
    view = service_api.get(f"/v1/executions/{step['execution_id']}").json()
    assert view["merge_field"] == {"reason": "NO_AGENTS"} and view["offers"] == []
    assert view["ended_at"] is not None


def test_a_busy_conversation_fails_201_and_its_retry_is_200(service_api, agents, team, flow):
    # Given a conversation with a waiting step
    agents()
    first = request(team, flow.reply_to)
    assert service_api.post("/v1/executions", json=first).status_code == 201
    # When another step is started for the same conversation
    second = request(team, flow.reply_to, conversation_id=first["conversation_id"])
    busy = service_api.post("/v1/executions", json=second)
    # Then it was a valid request that ended in exit error (conversation_busy): 201
    assert busy.status_code == 201, busy.text
    assert busy.json() == {"execution_id": second["execution_id"], "state": "failed",
                           "exit": "error", "duplicate": False}
    view = service_api.get(f"/v1/executions/{second['execution_id']}").json()
    assert view["merge_field"]["error"]["code"] == "conversation_busy"
    # And its retry is a retry
    assert service_api.post("/v1/executions", json=second).status_code == 200


def test_status_shows_the_execution_and_its_offers(service_api, agents, team, flow):
    alice, bob = sorted([agents(), agents()])
    step = request(team, flow.reply_to, execution_id=f"flow:{uuid.uuid4().hex[:8]}:step")
    assert service_api.post("/v1/executions", json=step).status_code == 201
    # Percent-encoded ids are decoded (flow%3A… is flow:…)
    path = "/v1/executions/" + step["execution_id"].replace(":", "%3A")
    response = service_api.get(path)
    assert response.status_code == 200, response.text
    view = response.json()
    assert set(view) == VIEW_KEYS
    assert view["execution_id"] == step["execution_id"]
    assert view["conversation_id"] == step["conversation_id"]
    assert (view["state"], view["exit"], view["merge_field"]) == ("waiting", None, None)
    assert view["dispatched_at"].endswith("+00:00") and view["ended_at"] is None
    assert view["offers"] == [{"agent_id": alice, "status": "offered"},
                              {"agent_id": bob, "status": "offered"}]


def test_status_of_an_unknown_execution_is_404(service_api):
    response = service_api.get(f"/v1/executions/nope-{uuid.uuid4().hex[:8]}")
    assert response.status_code == 404 and "no execution" in response.json()["detail"]
    assert service_api.get("/v1/executions/not%20an%20id").status_code == 422


def test_cancel_is_200_then_409_and_sends_no_exit(service_api, agents, team, flow, streams):
    # Given a waiting step offered to Alice
    alice = agents()
    step = request(team, flow.reply_to)
    assert service_api.post("/v1/executions", json=step).status_code == 201
    eid = step["execution_id"]
    # When the flow engine cancels it
    cancelled = service_api.post(f"/v1/executions/{eid}/cancel", json={"reason": "user left"})
    # Then 200 with the §4 result
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json() == {"outcome": "cancelled", "execution_id": eid,
                                "state": "cancelled", "exit": None, "merge_field": None}
    assert service_api.get(f"/v1/executions/{eid}").json()["state"] == "cancelled"
    # And Alice's offer is withdrawn, and no exit is sent
    time.sleep(0.5)
    assert any(e["type"] == "assistance.withdrawn" and e["execution_id"] == eid
               for e in streams.events(alice))
    assert flow.count_for(eid) == 0
    # A second cancel (no body) is 409 already_resolved, with the result fields
    late = service_api.post(f"/v1/executions/{eid}/cancel")
    assert late.status_code == 409, late.text
    assert late.json()["outcome"] == "already_resolved" and late.json()["detail"]
    assert late.json()["state"] == "cancelled"


def test_cancel_of_an_unknown_execution_is_404_and_a_bad_body_422(service_api):
    eid = f"nope-{uuid.uuid4().hex[:8]}"
    missing = service_api.post(f"/v1/executions/{eid}/cancel")
    assert missing.status_code == 404, missing.text
    assert missing.json()["outcome"] == "not_found" and missing.json()["execution_id"] == eid
    bad = service_api.post(f"/v1/executions/{eid}/cancel", json={"reasn": "typo"})
    assert bad.status_code == 422 and "reasn" in bad.json()["detail"]


def test_concurrent_starts_of_one_execution_id_make_one_execution(service_api, agents, team,
                                                                  flow, streams):
    # Given eight senders of the same request and two of another one under the same id, all
    # at once (a flow engine retrying in a hurry, and a buggy one reusing the id)
    from concurrent.futures import ThreadPoolExecutor
    from threading import Barrier

    alice = agents()
    step = request(team, flow.reply_to)
    other = {**step, "settings": {"timeout": "9m"}}
    bodies = [step] * 8 + [other] * 2
    barrier = Barrier(len(bodies))

    def send(body):
        barrier.wait()
        return service_api.post("/v1/executions", json=body)

    with ThreadPoolExecutor(len(bodies)) as pool:
        answers = list(pool.map(send, bodies))
    # Then exactly one created it; every copy of the winner's body is a retry; the other body
    # is a clash, whichever won
    codes = [a.status_code for a in answers]
    assert codes.count(201) == 1, codes
    winner = bodies[codes.index(201)]
    for body, code in zip(bodies, codes, strict=True):
        if code != 201:
            assert code == (200 if body is winner else 409), codes
    # And the step was offered once
    time.sleep(0.5)
    assert len([e for e in streams.events(alice) if e["type"] == "assistance.requested"
                and e["execution_id"] == step["execution_id"]]) == 1
