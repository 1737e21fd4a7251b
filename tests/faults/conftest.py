"""Fixtures for the fault tests: a private system per test module (see ``harness.py``)."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from hitl_workers.ops.processes import ALL_QUEUES
from tests.faults.harness import (
    Db,
    FaultSystem,
    Listener,
    PrivateRedis,
    TaskEvents,
    add_agents,
    private_app,
)
from tests.support.fixtures import ARTIFACTS


@dataclass
class Fx:
    """One private system: its Redis server(s), database, app, processes and observers."""

    redis: PrivateRedis
    notify_redis: PrivateRedis | None
    db_url: str
    db: Db
    app: Any
    system: FaultSystem
    listener: Listener
    events: TaskEvents
    team: str
    agents: list[str]

    @property
    def notifications(self) -> Any:
        """A client of the notification Redis (agents' streams)."""
        return (self.notify_redis.client(0) if self.notify_redis else self.redis.client(2))


def _recreate_database(url: str) -> None:
    from hitl_workers.store.migrate import upgrade

    parsed = make_url(url)
    admin = sa.create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)')
            conn.exec_driver_sql(f'CREATE DATABASE "{parsed.database}"')
    except sa.exc.OperationalError as exc:
        pytest.fail(f"PostgreSQL is required for the fault tests: {exc!r}", pytrace=False)
    finally:
        admin.dispose()
    upgrade(url)


def _drop_database(url: str) -> None:
    parsed = make_url(url)
    admin = sa.create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)')
    except sa.exc.OperationalError:
        pass  # PostgreSQL away: the next run drops it before use
    finally:
        admin.dispose()


@pytest.fixture(scope="module")
def fault_system(request: pytest.FixtureRequest) -> Iterator[Callable[..., Fx]]:
    """``fault_system(workers={name: (queues, concurrency)}, beats=1, env={...},
    own_notification_redis=False) -> Fx``, torn down at the end of the module."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is required for the fault tests (apt-get install "
                    "redis-server)", pytrace=False)
    module = request.module.__name__.rsplit(".", 1)[-1]
    log_dir = ARTIFACTS / "faults" / module
    base = make_url(os.environ["HITL_DATABASE_URL"])
    db_url = base.set(database=f"{base.database}_{module}"[:63]).render_as_string(
        hide_password=False)
    built: list[Fx] = []
    servers: list[PrivateRedis] = []

    def build(*, workers: Mapping[str, tuple[Sequence[str], int]] | None = None,
              beats: int = 1, env: Mapping[str, str] | None = None,
              own_notification_redis: bool = False) -> Fx:
        server = PrivateRedis(f"redis-{module}", log_dir).start()
        servers.append(server)
        notify = None
        if own_notification_redis:
            notify = PrivateRedis(f"redis-notify-{module}", log_dir).start()
            servers.append(notify)
        _recreate_database(db_url)
        proc_env = {
            "HITL_DATABASE_URL": db_url,
            "HITL_BROKER_URL": server.url(0),
            "HITL_RESULT_BACKEND_URL": server.url(1),
            "HITL_REDIS_URL": notify.url(0) if notify else server.url(2),
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        app = private_app(server.url(0), server.url(1))
        system = FaultSystem(app, log_dir, proc_env)
        events = TaskEvents(app).start()
        listener = Listener(server.url(0), f"flow-{module}-{uuid.uuid4().hex[:6]}").start()
        fx = Fx(server, notify, db_url, Db(db_url), app, system, listener, events,
                team=f"team:{uuid.uuid4().hex[:8]}", agents=[])
        built.append(fx)
        system.start_workers(workers or {f"{module}-w": (ALL_QUEUES, 4)})
        for i in range(beats):
            system.start_beat(f"beat{i + 1}")
        fx.agents = add_agents(app, fx.team)
        return fx

    yield build
    for fx in built:
        fx.listener.stop()
        fx.events.stop()
        fx.system.stop_all()
        fx.db.engine.dispose()
    for server in servers:
        server.stop()
    _drop_database(db_url)
