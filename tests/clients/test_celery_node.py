"""A Node.js flow engine built on the npm package ``celery-node``, on Redis, runs every exit of
the contract against the real workers (docs/contract.md §1–§5; the scenario and its checks are
in tests/clients/celery_node_run.py; on RabbitMQ: tests/clients/test_on_rabbitmq.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tests.clients.celery_node_run import check_run, scenario
from tests.clients.conftest import run_node


def test_a_celery_node_flow_engine_runs_every_exit(system: Any, tmp_path: Path) -> None:
    # Given a flow engine in Node.js that knows only the contract
    broker, backend = os.environ["HITL_BROKER_URL"], os.environ["HITL_RESULT_BACKEND_URL"]
    spec, ids = scenario(broker, backend)

    # When it manages its agents, starts seven steps and acts on them
    out = run_node("celery_node", "flow_engine.js", spec, tmp_path)

    # Then every step exited once, as documented, and every message fits docs/schema/
    check_run(spec, ids, out, os.environ["HITL_REDIS_URL"])
