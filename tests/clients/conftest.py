"""Clients nobody here wrote: flow engines in Node.js, run as real processes against real
workers (docs/contract.md is all they know).

Each client lives in a folder of its own with a ``package.json`` and a committed
``package-lock.json`` (exact versions); ``npm ci`` installs it once per session. Node.js and npm
are required: without them these tests fail, never skip.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

import celeryconfig
from hitl_workers.settings import Settings
from tests.rabbitmq.conftest import RABBITMQ_HOST, _rabbitmqctl
from tests.support import databases
from tests.support.fixtures import ARTIFACTS
from tests.support.system import System

CLIENTS = Path(__file__).parent
_installed: set[Path] = set()


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is required by tests/clients (Node.js 20 and npm) and is not on "
                    f"PATH. Install Node.js 20 with npm.", pytrace=False)
    return path


def install(client: str) -> Path:
    """``npm ci`` in ``tests/clients/<client>`` (once per session); its folder."""
    folder = CLIENTS / client
    if folder in _installed:
        return folder
    npm = _require("npm")
    _require("node")
    done = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                          cwd=folder, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        pytest.fail(f"npm ci in {folder} failed:\n{done.stdout}\n{done.stderr}", pytrace=False)
    _installed.add(folder)
    return folder


def start_node(client: str, script: str, scenario: dict[str, Any], tmp_path: Path,
               env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start ``node <script> scenario.json`` in the client's folder, in the background."""
    folder = install(client)
    scenario_file = tmp_path / f"{client}-scenario.json"
    scenario_file.write_text(json.dumps(scenario))
    return subprocess.Popen([_require("node"), script, str(scenario_file)], cwd=folder,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


def node_output(proc: subprocess.Popen[str], tmp_path: Path,
                timeout: float = 120) -> dict[str, Any]:
    """Wait for a client started by :func:`start_node`; the JSON it printed last."""
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
    (tmp_path / "node-stderr.log").write_text(stderr)
    assert proc.returncode == 0, f"node exited {proc.returncode}:\n{stderr[-4000:]}"
    return json.loads(stdout.strip().splitlines()[-1])


def run_node(client: str, script: str, scenario: dict[str, Any], tmp_path: Path,
             timeout: float = 120) -> dict[str, Any]:
    """Run ``node <script> scenario.json`` in the client's folder; the JSON it prints."""
    return node_output(start_node(client, script, scenario, tmp_path), tmp_path, timeout)


# --- a system on RabbitMQ, one per queue type -------------------------------------------------

@pytest.fixture(scope="module", params=["quorum", "classic"])
def rabbitmq_system(request: Any, database_url: str, redis_urls: dict[str, str]
                    ) -> Iterator[tuple[str, str, System]]:
    """``(queue type, amqp URL, system)``: a worker and beat with HITL_RABBITMQ_QUEUE_TYPE set,
    on a vhost and a database of their own (RabbitMQ cannot hold one queue name under two
    types). Results and notifications stay on the session's Redis."""
    queue_type = request.param
    vhost = f"hitl_clients_{queue_type}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    _rabbitmqctl("add_vhost", vhost)
    url = f"{RABBITMQ_HOST}/{vhost}"
    app = system = None
    try:  # from here on the vhost is deleted whatever fails
        _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        database = databases.fresh(databases.named(database_url, f"_clients_{queue_type}"))
        app = _rabbitmq_client_app(url, queue_type)
        system = System(app, ARTIFACTS / "logs" / f"rabbitmq-clients-{queue_type}",
                           {"HITL_BROKER_URL": url, "HITL_DATABASE_URL": database,
                            "HITL_RABBITMQ_QUEUE_TYPE": queue_type})
        system.start_worker("clients-worker", concurrency=4)
        system.start_beat()
        yield queue_type, url, system
    finally:
        if system is not None:
            system.stop_all()
        if app is not None:
            app.close()
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], capture_output=True,
                       timeout=60)


def _rabbitmq_client_app(url: str, queue_type: str) -> Celery:
    """The project's configuration on ``url`` with ``queue_type`` queues (tests.support.system's
    ``app_for``, with the queue type of this system rather than this process's)."""
    app = Celery("hitl_workers_client", set_as_current=False)
    app.config_from_object("celeryconfig")
    app.conf.update(broker_url=url, **celeryconfig.settings_for_broker(
        url, Settings(rabbitmq_queue_type=queue_type)))
    return app
