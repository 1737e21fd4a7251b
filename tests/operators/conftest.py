"""Fixtures for the operator tests: the system as an operator runs it, watched from outside.

``ops`` is a worker of the package's own (node ``ops@<host>``: JSON logs, its own metrics
directory and metrics port, three prefork children that each run a single task before being
replaced, so every step is spread over several processes) and a real ``hitl-workers gateway``
reading that metrics directory. While the package runs, the session's worker stops consuming
(remote control ``cancel_consumer``; ``add_consumer`` gives its queues back afterwards): the
tests must know which process ran each task. The session's beat keeps ticking.
"""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hitl_workers.ops.processes import ALL_QUEUES, Proc
from tests.gateway.harness import Gateway
from tests.support.fixtures import ARTIFACTS
from tests.support.ports import free_port
from tests.support.system import System

ROOT = Path(__file__).resolve().parents[2]
HOST = os.uname().nodename
OPS_NODE = f"ops@{HOST}"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_metrics(text: str) -> Samples:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (over every node)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))


def cli() -> list[str]:
    script = Path(sys.executable).parent / "hitl-workers"
    return [str(script)] if script.exists() else [sys.executable, "-m", "hitl_workers.cli"]


@dataclass
class Ops:
    app: Any
    env: dict[str, str]
    metrics_dir: Path
    metrics_port: int
    worker: Proc
    gateway: Gateway

    @property
    def node_dir(self) -> Path:
        from hitl_workers.observe.metrics_reader import node_dir

        return node_dir(self.metrics_dir, OPS_NODE)

    def gateway_metrics(self) -> Samples:
        return parse_metrics(httpx.get(f"{self.gateway.url}/metrics", timeout=10).text)

    def worker_metrics(self) -> Samples:
        return parse_metrics(
            httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).text)

    def log_lines(self) -> list[str]:
        return self.worker.log_path.read_text(errors="replace").splitlines()


@pytest.fixture(scope="package")
def ops(system: System) -> Iterator[Ops]:
    run = uuid.uuid4().hex[:8]
    metrics_dir = ARTIFACTS / f"metrics-{run}"
    metrics_port = free_port()
    env = {"HITL_METRICS_DIR": str(metrics_dir), "HITL_LOG_JSON": "true",
           "HITL_METRICS_PORT": str(metrics_port), "HITL_METRICS_ADDRESS": "127.0.0.1"}
    log_dir = ARTIFACTS / "logs"
    (log_dir / "ops.log").unlink(missing_ok=True)
    # A worker of its own (metrics and JSON logs on), beside the session's system.
    ops_system = System(system.app, log_dir, env, cwd=ROOT)
    worker = ops_system.launch_worker("ops", 3, extra=["--max-tasks-per-child", "1"])
    others: list[str] = []
    gateway = Gateway("ops-gateway", env={"HITL_METRICS_DIR": str(metrics_dir)})
    try:
        ops_system.wait_ready(["ops"])
        replies = system.app.control.ping(timeout=1.0) or []
        others = sorted(n for reply in replies for n in reply if n != OPS_NODE)
        for queue in ALL_QUEUES:
            system.app.control.cancel_consumer(queue, destination=others, reply=True,
                                               timeout=5)
        gateway.start()
        yield Ops(system.app, env, metrics_dir, metrics_port, worker, gateway)
    finally:
        gateway.stop()
        for queue in ALL_QUEUES:
            if others:
                system.app.control.add_consumer(queue, destination=others, reply=True,
                                                timeout=5)
        worker.stop()
        shutil.rmtree(metrics_dir, ignore_errors=True)
