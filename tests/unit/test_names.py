"""Each name is declared once (domain/names.py) and the rest of the system follows it."""

from __future__ import annotations

import importlib

import celeryconfig
from hitl_workers.app import TASK_MODULES, app
from hitl_workers.domain.names import QUEUE_NAMES, TASK_QUEUES


def test_every_task_the_worker_registers_has_a_route_and_every_route_a_task() -> None:
    for module in TASK_MODULES:
        importlib.import_module(module)
    registered = {name for name in app.tasks if name.startswith("hitl.")}
    assert registered == set(TASK_QUEUES)


def test_the_broker_declares_exactly_the_queues_the_routes_use() -> None:
    assert {q.name for q in celeryconfig.task_queues} == set(QUEUE_NAMES)
    assert set(TASK_QUEUES.values()) == set(QUEUE_NAMES)
    assert {r["queue"] for r in celeryconfig.task_routes.values()} == set(QUEUE_NAMES)
