"""Fixtures for the tiers that run against real services: the session's database, Redis,
worker and beat (one system for the whole session), a client, a flow engine, agents."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.support import databases
from tests.support.system import System

ARTIFACTS = Path(os.environ.get("HITL_TEST_ARTIFACTS", "test-artifacts"))
TASK_TIMEOUT = 20


def _fail_unreachable(what: str, exc: Exception) -> None:
    pytest.fail(f"{what} is required for this test and is not reachable: {exc!r}. "
                f"Start it (see .ci/run) or point HITL_TEST_* at one.", pytrace=False)


def fresh_database(url: str) -> str:
    """:func:`tests.support.databases.fresh`, failing the test (never skipping it) when
    PostgreSQL is not there."""
    try:
        return databases.fresh(url)
    except databases.DatabaseUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def database_url() -> str:
    """A fresh, migrated PostgreSQL database for the session."""
    from hitl_workers.store.db import reset_engine

    url = os.environ["HITL_DATABASE_URL"]
    fresh_database(url)
    reset_engine()
    return url


@pytest.fixture(params=["postgresql", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
          ) -> Iterator[str]:
    """The application's store on the session's PostgreSQL, then on a fresh SQLite file
    (``make run``'s embedded default): a test taking it runs once on each, and gets the
    dialect's name."""
    from hitl_workers.settings import get_settings
    from hitl_workers.store.db import reset_engine, transaction

    if request.param == "postgresql":
        request.getfixturevalue("database_url")
    else:
        url = databases.fresh(f"sqlite:///{tmp_path / 'store.db'}")
        monkeypatch.setattr(get_settings(), "database_url", url)
    reset_engine()
    with transaction() as conn:
        assert conn.dialect.name == request.param
        # (the SQLite file is new and dies with the test: nothing to leave behind there)
        before = _waiting(conn) if request.param == "postgresql" else None
    yield request.param
    if before is not None:
        _cancel_left_waiting(before)
    reset_engine()


def _waiting(conn: Any) -> set[str]:
    import sqlalchemy as sa

    from hitl_workers.store.tables import executions

    return set(conn.execute(sa.select(executions.c.execution_id)
                            .where(executions.c.state == "waiting")).scalars())


def _cancel_left_waiting(before: set[str]) -> None:
    """Cancel the steps a store-level test left waiting in the session's database. The
    session's worker and beat, when an earlier test started them, would otherwise fire their
    deadlines for minutes (a sequential step passes its offer on at every offer timeout),
    which other tests then see in the whole system's metrics: CI once counted nine offers
    missed in a test that made one. Their withdrawals stay in the outbox, as the test's own
    notifications do: the reconciler sends them once a system runs."""
    from hitl_workers.clock import utcnow
    from hitl_workers.services.agent_events import CancelIn, handle_cancel
    from hitl_workers.store.db import transaction

    with transaction() as conn:
        left = _waiting(conn) - before
    for execution_id in sorted(left):
        with transaction() as conn:
            handle_cancel(conn, CancelIn(execution_id=execution_id, reason="test over"),
                          utcnow())


@pytest.fixture(scope="session")
def redis_urls() -> dict[str, str]:
    urls = {name: os.environ[f"HITL_{name.upper()}_URL"]
            for name in ("broker", "result_backend", "redis")}
    for url in urls.values():
        if not url.startswith("redis"):
            continue
        try:
            redis.Redis.from_url(url).flushdb()
        except redis.RedisError as exc:
            _fail_unreachable("Redis", exc)
    return urls


@pytest.fixture(scope="session")
def celery_app(database_url: str, redis_urls: dict[str, str]) -> Any:
    from hitl_workers.app import app

    return app


@pytest.fixture(scope="session")
def system(celery_app: Any) -> Iterator[System]:
    """One worker on every queue plus beat, for the whole session."""
    log_dir = ARTIFACTS / "logs"
    system = System(celery_app, log_dir)
    try:
        system.start_worker("worker")
        system.start_beat()
        yield system
    finally:
        system.stop_all()


class Client:
    """Sends contract messages by task name, as a flow engine or agent UI would."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def call(self, task: str, timeout: float = TASK_TIMEOUT, **kwargs: Any) -> Any:
        return self.app.send_task(task, kwargs=kwargs).get(timeout=timeout)

    def send(self, task: str, *args: Any, **kwargs: Any) -> Any:
        return self.app.send_task(task, args=args, kwargs=kwargs)


@pytest.fixture
def client(system: System) -> Client:
    return Client(system.app)


@pytest.fixture
def flow(system: System) -> Iterator[Any]:
    """A flow engine listening on a queue of its own for this test's exits."""
    from hitl_workers.ops.flow_engine import ExitListener

    listener = ExitListener(os.environ["HITL_BROKER_URL"], f"flow-test-{uuid.uuid4().hex[:10]}")
    with listener:
        yield listener


@pytest.fixture
def uid() -> Callable[[str], str]:
    """Unique ids, so tests sharing one database never see each other's rows."""
    token = uuid.uuid4().hex[:8]
    return lambda prefix: f"{prefix}-{token}"


@pytest.fixture
def team(uid: Callable[[str], str]) -> str:
    """A tag only this test's agents and conversations carry."""
    return f"team:{uid('t')}"


@pytest.fixture
def agents(client: Client, team: str) -> Iterator[Callable[..., str]]:
    """``agents(status="available", groups=None) -> agent_id``; removed after the test."""
    created: list[str] = []

    def make(status: str = "available", groups: list[list[str]] | None = None,
             name: str = "") -> str:
        agent_id = f"agent-{uuid.uuid4().hex[:10]}"
        result = client.call("hitl.upsert_agent", agent_id=agent_id, name=name or agent_id,
                             status=status, rule_groups=groups if groups is not None
                             else [[team]])
        assert result == {"agent_id": agent_id, "status": status}
        created.append(agent_id)
        return agent_id

    yield make
    for agent_id in created:
        client.call("hitl.remove_agent", agent_id=agent_id)


@pytest.fixture
def streams(redis_urls: dict[str, str]) -> Any:
    """Reads agents' notification streams."""
    import json

    from hitl_workers.notify.streams import stream_key

    client = redis.Redis.from_url(redis_urls["redis"], decode_responses=True)

    class Streams:
        def events(self, agent_id: str) -> list[dict[str, Any]]:
            return [json.loads(fields["event"])
                    for _id, fields in client.xrange(stream_key(agent_id))]

    return Streams()
