"""Flower, started as ``hitl-workers run`` and the Procfile start it, with basic auth: searching
an execution id finds the step's request, claim, wake-ups and exit."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from hitl_workers.ops.processes import Proc, celery_cmd, flower_cmd, wait_for_workers
from hitl_workers.settings import Settings
from tests.operators.conftest import HOST, ROOT, Ops
from tests.support.fixtures import ARTIFACTS
from tests.support.ports import free_port
from tests.support.steps import eventually, request

USER, PASSWORD = "operator", f"pw-{uuid.uuid4().hex[:8]}"


@dataclass
class Flower:
    url: str
    proc: Proc

    def search(self, query: str) -> dict[str, dict[str, Any]]:
        answer = httpx.get(f"{self.url}/api/tasks", params={"search": query},
                           auth=(USER, PASSWORD), timeout=10)
        answer.raise_for_status()
        return dict(answer.json())


@pytest.fixture(scope="module")
def flower(ops: Ops) -> Iterator[Flower]:
    port = free_port()
    cmd = flower_cmd(Settings(flower_basic_auth=f"{USER}:{PASSWORD}"), port=port)
    proc = Proc("flower", cmd, log_dir=ARTIFACTS / "logs", cwd=ROOT).start()
    found = Flower(f"http://127.0.0.1:{port}", proc)
    try:
        deadline = time.monotonic() + 60
        while True:
            if not proc.alive:
                pytest.fail(f"Flower exited at start:\n{proc.tail()}")
            try:
                if httpx.get(f"{found.url}/healthcheck", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"Flower was not ready in 60 s:\n{proc.tail()}")
            time.sleep(0.2)
        # Flower knows only the events it receives from its start on: wait until it sees one.
        probe = f"flower-probe-{uuid.uuid4().hex[:8]}"
        deadline = time.monotonic() + 30
        while not found.search(probe):
            ops.app.send_task("hitl.set_agent_status", kwargs={"agent_id": probe,
                                                                "status": "busy"})
            if time.monotonic() > deadline:
                pytest.fail(f"Flower saw no task events in 30 s:\n{proc.tail()}")
            time.sleep(0.5)
        yield found
    finally:
        proc.stop()


@dataclass
class FlowEngine:
    queue: str

    @property
    def reply_to(self) -> dict[str, str]:
        return {"task": "flow.step_exited", "queue": self.queue}


@pytest.fixture(scope="module")
def flow_engine(ops: Ops) -> Iterator[FlowEngine]:
    """A flow engine's Celery worker with task events on: Flower shows the exits it runs."""
    queue = f"flow-ops-{uuid.uuid4().hex[:8]}"
    node = f"flow-{queue}@{HOST}"
    cmd = celery_cmd("worker", "-Q", queue, "-n", node, "-P", "solo", "-E",
                     "--without-mingle", "--without-gossip", "--loglevel", "INFO")
    cmd[cmd.index("hitl_workers.app")] = "tests.operators.flow_engine"
    proc = Proc("flow-engine", cmd, env={"OPS_FLOW_QUEUE": queue},
                log_dir=ARTIFACTS / "logs", cwd=ROOT).start()
    try:
        wait_for_workers(ops.app, [node], timeout=60, procs=[proc])
        yield FlowEngine(queue)
    finally:
        proc.stop()


def names(tasks: dict[str, dict[str, Any]]) -> set[str]:
    return {task["name"] for task in tasks.values()}


def test_searching_an_execution_id_finds_the_steps_tasks(
        ops: Ops, flower: Flower, flow_engine: FlowEngine, client: Any,
        agents: Callable[..., str], team: str) -> None:
    # Given one step claimed (its timeout wake-up then revoked) and one that times out
    agent = agents()
    claimed = request(team, flow_engine.reply_to, timeout="60s")
    assert client.call("hitl.request_assistance", **claimed)["state"] == "waiting"
    answer = client.call("hitl.claim", execution_id=claimed["execution_id"], agent_id=agent)
    assert answer["outcome"] == "claimed"
    timed_out = request(team, flow_engine.reply_to, timeout="1s")
    assert client.call("hitl.request_assistance", **timed_out)["state"] == "waiting"

    # Then Flower's search by the execution id finds each step's tasks, by name and task id
    # (the claimed step's wake-up is revoked: a worker that had not fetched it yet when the
    # revoke came never reports it received, so Flower knows it by its id alone)
    want = {"hitl.request_assistance", "hitl.claim", "flow.step_exited"}
    a = claimed["execution_id"]
    wake_up = f"hitl-timer:timeout:{a}"

    def found_a() -> bool:
        found = flower.search(a)
        return names(found) >= want and wake_up in found

    assert eventually(found_a, timeout=20), flower.search(a)
    found = flower.search(a)
    assert found[f"exit:{a}"]["state"] == "SUCCESS"
    assert found[wake_up]["state"] in ("RECEIVED", "REVOKED")
    assert names(flower.search(f"kwargs:execution_id={a}")) >= want

    b = timed_out["execution_id"]
    want_b = {"hitl.request_assistance", "hitl.fire_timer", "flow.step_exited"}
    assert eventually(lambda: names(flower.search(b)) >= want_b, timeout=20), flower.search(b)
    # (the wake-up runs when due, even when the reconciler's sweep fired the deadline first)
    assert eventually(lambda: flower.search(b)[f"hitl-timer:timeout:{b}"]["state"] == "SUCCESS",
                      timeout=20)
    assert a not in str(flower.search(b))


def test_a_request_sent_without_kwargsrepr_is_still_found(
        ops: Ops, flower: Flower, flow_engine: FlowEngine, client: Any, team: str) -> None:
    # Given a request from a client that sends no kwargsrepr header (one not written in
    # Python), with a long popup text before its ids
    plain = request(team, flow_engine.reply_to)
    step = {"settings": {"popup": {"text": "x" * 3000}, "timeout": "5m"},
            **{k: v for k, v in plain.items() if k != "settings"}}
    result = ops.app.send_task("hitl.request_assistance", kwargs=step, kwargsrepr="")
    result.get(timeout=20)

    # Then Flower still shows its arguments, ids first, and finds it
    def requests() -> list[dict[str, Any]]:
        return [t for t in flower.search(step["execution_id"]).values()
                if t["name"] == "hitl.request_assistance"]

    (task,) = eventually(requests, timeout=20)
    assert task["kwargs"].startswith(f"{{'execution_id': '{step['execution_id']}'")


def test_an_exit_shows_in_flower_whatever_runs_the_flow_engine(
        ops: Ops, flower: Flower, client: Any, agents: Callable[..., str], team: str) -> None:
    # Given a flow engine whose consumer sends no task events (celery-node, raw AMQP): here,
    # nobody consumes its queue at all
    agent = agents()
    silent = {"task": "flow.step_exited", "queue": f"flow-silent-{uuid.uuid4().hex[:8]}"}
    step = request(team, silent, timeout="60s")
    assert client.call("hitl.request_assistance", **step)["state"] == "waiting"
    # When the step is claimed
    answer = client.call("hitl.claim", execution_id=step["execution_id"], agent_id=agent)
    assert answer["outcome"] == "claimed"
    # Then Flower shows its exit message, sent, with its arguments
    exit_id = f"exit:{step['execution_id']}"
    found = eventually(lambda: flower.search(step["execution_id"]).get(exit_id), timeout=20)
    assert found["name"] == "flow.step_exited"
    assert found["state"] == "PENDING"  # sent; no consumer has reported it
    assert "'exit': 'claimed'" in found["kwargs"]


def test_a_plain_celery_flower_takes_the_password_from_the_environment() -> None:
    # Given HITL_FLOWER_BASIC_AUTH and a Flower started without --basic-auth
    port = free_port()
    cmd = celery_cmd("flower", f"--port={port}", "--address=127.0.0.1")
    proc = Proc("flower-plain", cmd, env={"HITL_FLOWER_BASIC_AUTH": f"{USER}:{PASSWORD}"},
                log_dir=ARTIFACTS / "logs", cwd=ROOT).start()
    url = f"http://127.0.0.1:{port}"
    try:
        def up() -> bool:
            assert proc.alive, proc.tail()
            try:
                return httpx.get(f"{url}/healthcheck", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False
        assert eventually(up, timeout=60), proc.tail()
        # Then it asks for that password, on the dashboard too (Flower's API refuses anyone
        # when no authentication is set at all, so the API alone would prove nothing)
        assert httpx.get(f"{url}/", timeout=10).status_code == 401
        assert httpx.get(f"{url}/", auth=(USER, "wrong"), timeout=10).status_code == 401
        assert httpx.get(f"{url}/", auth=(USER, PASSWORD), timeout=10).status_code == 200
    finally:
        proc.stop()


def test_flower_asks_for_the_password(flower: Flower) -> None:
    assert httpx.get(f"{flower.url}/api/tasks", timeout=10).status_code == 401
    assert httpx.get(f"{flower.url}/api/tasks", auth=(USER, "wrong"),
                     timeout=10).status_code == 401
    assert httpx.get(f"{flower.url}/", auth=(USER, PASSWORD), timeout=10).status_code == 200


def test_flower_runs_with_the_environments_credentials() -> None:
    # The Procfile and deploy/ pass HITL_FLOWER_BASIC_AUTH as --basic-auth; so does
    # hitl-workers run, and only when it is set.
    with_auth = flower_cmd(Settings(flower_basic_auth="a:b"), port=1)
    assert "--basic-auth=a:b" in with_auth
    without = flower_cmd(Settings(flower_basic_auth=None), port=1)
    assert not any(a.startswith("--basic-auth") for a in without)
