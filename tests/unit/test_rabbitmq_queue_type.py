"""HITL_RABBITMQ_QUEUE_TYPE decides how every queue is declared on RabbitMQ (docs/contract.md §2).

The real proof is tests/clients/test_on_rabbitmq.py (Node.js flow engines under each setting);
these pin the declarations themselves, which a flow engine copies.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

import celeryconfig
from hitl_workers.ops.flow_engine import queue_for
from hitl_workers.settings import Settings, get_settings

AMQP = "amqp://guest:guest@127.0.0.1:5672/vhost"


def test_quorum_is_the_default_with_native_delayed_delivery() -> None:
    conf = celeryconfig.settings_for_broker(AMQP, Settings())

    for queue in conf["task_queues"]:
        assert queue.queue_arguments == {"x-queue-type": "quorum"}
        assert queue.durable and queue.exchange.type == "topic"
        assert queue.exchange.name == queue.name == queue.routing_key
    assert conf["task_create_missing_queue_type"] == "quorum"
    assert conf["task_create_missing_queue_exchange_type"] == "topic"
    assert conf["broker_native_delayed_delivery_queue_type"] == "quorum"


def test_classic_declares_no_queue_type_and_no_delayed_delivery() -> None:
    conf = celeryconfig.settings_for_broker(AMQP, Settings(rabbitmq_queue_type="classic"))

    for queue in conf["task_queues"]:
        assert not queue.queue_arguments  # what a plain AMQP client declares
        assert queue.durable and queue.exchange.type == "topic"
        assert queue.exchange.name == queue.name == queue.routing_key
    assert conf["task_create_missing_queue_type"] == "classic"
    assert "broker_native_delayed_delivery_queue_type" not in conf


def test_an_unknown_queue_type_is_refused_at_start_up() -> None:
    with pytest.raises(ValidationError, match="rabbitmq_queue_type"):
        Settings(rabbitmq_queue_type="stream")


def test_the_flow_simulator_declares_its_reply_queue_by_the_setting(
        monkeypatch: pytest.MonkeyPatch) -> None:
    settings = get_settings()
    monkeypatch.setattr(settings, "rabbitmq_queue_type", "classic")
    assert not queue_for(AMQP, "flow").queue_arguments
    monkeypatch.setattr(settings, "rabbitmq_queue_type", "quorum")
    assert queue_for(AMQP, "flow").queue_arguments == {"x-queue-type": "quorum"}


def test_redis_is_unaffected() -> None:
    classic = celeryconfig.settings_for_broker("redis://x/0",
                                               Settings(rabbitmq_queue_type="classic"))
    quorum = celeryconfig.settings_for_broker("redis://x/0", Settings())
    assert [q.name for q in classic["task_queues"]] == [q.name for q in quorum["task_queues"]]
    assert all(q.exchange.type == "direct" for q in classic["task_queues"])


def test_classic_queues_warn_of_a_horizon_past_rabbitmqs_consumer_timeout() -> None:
    with pytest.warns(UserWarning, match="consumer_timeout"):
        Settings(broker_url=AMQP, rabbitmq_queue_type="classic", timer_horizon_s=3600)


def test_quorum_queues_hold_no_wake_up_so_a_long_horizon_is_fine(recwarn: Any) -> None:
    Settings(broker_url=AMQP, timer_horizon_s=3600)
    Settings(broker_url=AMQP, rabbitmq_queue_type="classic", timer_horizon_s=600)
    assert not [w for w in recwarn if "consumer_timeout" in str(w.message)]
