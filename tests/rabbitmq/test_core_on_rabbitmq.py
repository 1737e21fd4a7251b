"""The core scenarios on RabbitMQ: a worker, beat, the flow engine and the agents on an AMQP
broker, with celeryconfig.py's RabbitMQ settings (quorum queues on topic exchanges, native
delayed delivery, publisher confirms).

Every scenario of tests/acceptance/test_exits.py runs here unchanged — claim, each
``not_claimed`` reason, ``timer_action``, ``timeout``, reject under both policies, ``error`` —
followed by what is particular to RabbitMQ: twenty agents racing on one step, wake-ups that wait
in the broker instead of in a worker, and a worker killed with messages in flight.
"""

from __future__ import annotations

import re
import time
import uuid
from collections import Counter

import pytest
from celery import Celery
from kombu import Connection

import celeryconfig
from hitl_workers.ops.flow_engine import ExitListener, queue_for
from hitl_workers.services.effects import timer_task_id
from hitl_workers.settings import get_settings
from tests.acceptance import test_exits
from tests.support.steps import call_at_once, execution, outbox_rows, request, stays

pytestmark = pytest.mark.slow

# The acceptance scenarios, collected here too: with this directory's fixtures they run on
# RabbitMQ (conftest.py). A scenario added to test_exits.py runs here as well.
globals().update({name: test for name, test in vars(test_exits).items()
                  if name.startswith("test_") and callable(test)})

AMQP = "amqp://guest:guest@rabbitmq.example:5672/hitl"


def test_every_queue_is_declared_as_a_flow_engine_declares_it():
    # Given the RabbitMQ settings
    conf = celeryconfig.settings_for_broker(AMQP, get_settings())
    # Then the system's own queues follow the rule a flow engine follows (ops.flow_engine.queue_for)
    for queue in conf["task_queues"]:
        expected = queue_for(AMQP, queue.name)
        assert (queue.exchange.name, queue.exchange.type, queue.routing_key,
                queue.queue_arguments) == (expected.exchange.name, expected.exchange.type,
                                           expected.routing_key, expected.queue_arguments)
    # And so does a reply queue, which Celery declares when it publishes an exit to it
    app = Celery("declarations", set_as_current=False)
    app.config_from_object("celeryconfig")
    app.conf.update(broker_url=AMQP, **conf)
    missing, expected = app.amqp.queues["flow-engine-7"], queue_for(AMQP, "flow-engine-7")
    assert (missing.exchange.name, missing.exchange.type, missing.routing_key,
            missing.queue_arguments) == (expected.exchange.name, expected.exchange.type,
                                         expected.routing_key, expected.queue_arguments)
    assert conf["broker_transport_options"] == {"confirm_publish": True}


def test_twenty_agents_claiming_at_once_make_exactly_one_winner(client, flow, agents, team,
                                                                system):
    crowd = [agents() for _ in range(20)]
    step = request(team, flow.reply_to)
    eid = step["execution_id"]
    assert client.call("hitl.request_assistance", **step)["state"] == "waiting"
    results = call_at_once(system.app, [("hitl.claim", {"execution_id": eid, "agent_id": a})
                                        for a in crowd])
    assert Counter(r["outcome"] for r in results) == {"claimed": 1, "already_resolved": 19}
    winner = crowd[[r["outcome"] for r in results].index("claimed")]
    assert flow.wait_for(eid)["merge_field"] == {"addClaimedBy": winner}
    assert stays(lambda: flow.count_for(eid) == 1, seconds=2.0)
    assert len(outbox_rows(eid, "exit")) == 1
    assert (execution(eid).state, execution(eid).exit) == ("exited", "claimed")


def test_a_wake_up_waits_in_the_broker_not_in_the_worker(client, flow, agents, team, system):
    # Given a step whose timeout is armed at dispatch
    agents()
    step = request(team, flow.reply_to, timeout="5s")
    eid = step["execution_id"]
    client.call("hitl.request_assistance", **step)
    dispatched = time.monotonic()
    # Then, while it waits, no worker holds its wake-up: the broker's delayed-delivery queues
    # do (on Redis the worker would list it as scheduled until the deadline)
    time.sleep(1.0)
    scheduled = system.app.control.inspect(timeout=2).scheduled() or {}
    held = [entry["request"]["id"] for entries in scheduled.values() for entry in entries]
    assert scheduled, "the worker did not answer"
    assert timer_task_id(eid, "timeout") not in held
    assert execution(eid).state == "waiting"
    # And the broker hands it over in time: the step exits timeout, once
    message = flow.wait_for(eid, timeout=10)
    assert message["exit"] == "timeout"
    assert 4.5 < time.monotonic() - dispatched < 7.0
    assert stays(lambda: flow.count_for(eid) == 1, seconds=1.0)


RECEIVED = re.compile(r"Task hitl\.request_assistance\[([^\]]+)\] received")
SUCCEEDED = re.compile(r"Task hitl\.request_assistance\[([^\]]+)\] succeeded")


def test_a_killed_worker_gives_back_what_it_held_at_once(client, flow, agents, team, system):
    # Given 40 steps requested at once
    agents()
    steps = [request(team, flow.reply_to) for _ in range(40)]
    sent = [system.app.send_task("hitl.request_assistance", kwargs=s) for s in steps]
    ids = {r.id for r in sent}
    log = system.procs["rabbit-worker"].log_path

    def seen(pattern: re.Pattern[str]) -> set[str]:
        return ids & set(pattern.findall(log.read_text(errors="replace")))

    # When the worker is killed (kill -9 of its process group) as soon as it has run one
    deadline = time.monotonic() + 10
    while not seen(SUCCEEDED) and time.monotonic() < deadline:
        time.sleep(0.01)
    system.procs["rabbit-worker"].kill()
    held = seen(RECEIVED) - seen(SUCCEEDED)
    # And started again at once: there is no visibility timeout to wait out, RabbitMQ queued
    # again what the dead worker's connection had not acknowledged
    system.restart_worker("rabbit-worker")
    # Then every request is answered and every step waits for its agents: none was lost
    results = [r.get(timeout=20) for r in sent]
    assert {(r["state"], r["exit"]) for r in results} == {("waiting", None)}
    assert {r["execution_id"] for r in results} == {s["execution_id"] for s in steps}
    assert held, "the worker was killed before it held anything, so this proved nothing"
    print(f"requests the killed worker held, redelivered: {len(held)}")


def test_the_exit_listener_deletes_its_queue_when_done(rabbitmq_url):
    name = f"flow-test-{uuid.uuid4().hex[:10]}"
    with ExitListener(rabbitmq_url, name):
        deadline = time.monotonic() + 5
        while not _queue_exists(rabbitmq_url, name) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _queue_exists(rabbitmq_url, name)
    assert not _queue_exists(rabbitmq_url, name)


def _queue_exists(url: str, name: str) -> bool:
    with Connection(url) as conn:
        try:
            conn.default_channel.queue_declare(queue=name, passive=True)
        except conn.channel_errors:
            return False
        return True
