"""The worker's task events for Flower on RabbitMQ: the broker-independent scenarios of
tests/acceptance/test_worker_events.py, run unchanged against this directory's system (the
events travel in the same ``task.multi`` messages, through kombu's AMQP producer)."""

from __future__ import annotations

import pytest

from tests.acceptance import test_worker_events

pytestmark = pytest.mark.slow

BROKER_INDEPENDENT = ("test_a_receiver_gets_every_event_of_every_task",
                      "test_a_tasks_last_events_go_out_when_the_worker_stops",
                      "test_events_held_when_the_connection_is_lost_go_out_on_the_next")
globals().update({name: getattr(test_worker_events, name) for name in BROKER_INDEPENDENT})
