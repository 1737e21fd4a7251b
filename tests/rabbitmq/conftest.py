"""RabbitMQ as the broker: a system of its own, on a vhost of its own, in the same session.

The worker and beat here get ``HITL_BROKER_URL=amqp://…`` and a database of their own (see
tests/support/system.py for why two systems share neither); the result backend and the
agents' notification streams stay on the session's Redis. The test process talks to them
through a second Celery app configured for AMQP.

The fixtures ``system`` and ``flow`` are overridden for this directory, so the acceptance
scenarios imported by the tests here run unchanged against RabbitMQ; ``client`` and ``agents``
follow, since they are built on ``system``. While this directory's tests run, the test process
reads the RabbitMQ system's database (the acceptance tests' readers use the process's engine).

RabbitMQ: ``HITL_TEST_RABBITMQ_URL`` names a vhost to use as it is; without it a vhost of its
own is made for the run with ``rabbitmqctl`` on the local node and deleted afterwards. When
RabbitMQ is unreachable the tests fail, never skip: ``.ci/services`` starts (or installs) it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kombu import Connection

from hitl_workers.ops.flow_engine import ExitListener
from tests.support import databases
from tests.support.fixtures import ARTIFACTS, fresh_database
from tests.support.system import System, app_for

RABBITMQ_HOST = "amqp://guest:guest@127.0.0.1:5672"


def _fail(why: str) -> None:
    pytest.fail(f"RabbitMQ is required for these tests and {why}. Start it with .ci/services "
                f"(it installs RabbitMQ when absent), or set HITL_TEST_RABBITMQ_URL to an "
                f"amqp:// URL of a vhost the tests may use.", pytrace=False)


def _rabbitmqctl(*args: str) -> None:
    if shutil.which("rabbitmqctl") is None:
        _fail("rabbitmqctl, which makes a vhost for the run, is not installed")
    try:
        done = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True,
                              timeout=60)
    except subprocess.TimeoutExpired:
        done = None
    if done is None:
        _fail(f"`rabbitmqctl {' '.join(args)}` did not answer in 60 s")
    elif done.returncode != 0:
        _fail(f"`rabbitmqctl {' '.join(args)}` failed: {done.stderr.strip() or done.stdout}")


@pytest.fixture(scope="module")
def rabbitmq_url() -> Iterator[str]:
    """An empty vhost for this module (or the one HITL_TEST_RABBITMQ_URL names)."""
    given = os.environ.get("HITL_TEST_RABBITMQ_URL")
    vhost = None if given else f"hitl_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    if vhost is not None:
        _rabbitmqctl("add_vhost", vhost)
        _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    url = given or f"{RABBITMQ_HOST}/{vhost}"
    problem = None
    try:
        with Connection(url, connect_timeout=5) as conn:
            conn.ensure_connection(max_retries=2, interval_start=0.5)
    except Exception as exc:
        problem = exc
    if problem is not None:
        _fail(f"{url} is not reachable: {problem!r}")
    try:
        yield url
    finally:
        if vhost is not None:
            subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], capture_output=True,
                           timeout=60)


@pytest.fixture(scope="module")
def rabbitmq_database(database_url: str) -> str:
    return fresh_database(databases.named(database_url, "_rabbitmq"))


@pytest.fixture(scope="module")
def system(rabbitmq_url: str, rabbitmq_database: str, redis_urls: dict[str, str]
           ) -> Iterator[System]:
    """One worker on every queue plus beat, on RabbitMQ, for this module."""
    app = app_for(rabbitmq_url)
    system = System(app, ARTIFACTS / "logs" / "rabbitmq",
                       {"HITL_BROKER_URL": rabbitmq_url, "HITL_DATABASE_URL": rabbitmq_database})
    try:
        system.start_worker("rabbit-worker")
        system.start_beat()
        yield system
    finally:
        system.stop_all()
        app.close()


@pytest.fixture(scope="module", autouse=True)
def _reads_from_the_rabbitmq_database(system: System, rabbitmq_database: str
                                      ) -> Iterator[None]:
    from hitl_workers.settings import get_settings
    from hitl_workers.store.db import reset_engine

    settings = get_settings()
    session_database = settings.database_url
    settings.database_url = rabbitmq_database
    reset_engine()
    try:
        yield
    finally:
        settings.database_url = session_database
        reset_engine()


@pytest.fixture
def flow(rabbitmq_url: str, system: System) -> Iterator[Any]:
    """A flow engine listening for this test's exits on a queue of its own, on RabbitMQ."""
    with ExitListener(rabbitmq_url, f"flow-test-{uuid.uuid4().hex[:10]}") as listener:
        yield listener
