"""Fixtures for the fault tests: a private system per test module (see ``harness.py``)."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

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
from tests.support import databases
from tests.support.fixtures import ARTIFACTS, fresh_database


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


@pytest.fixture(scope="module")
def fault_system(request: pytest.FixtureRequest) -> Iterator[Callable[..., Fx]]:
    """``fault_system(workers={name: (queues, concurrency)}, beats=1, env={...},
    own_notification_redis=False) -> Fx``, torn down at the end of the module."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is required for the fault tests (apt-get install "
                    "redis-server)", pytrace=False)
    module = request.module.__name__.rsplit(".", 1)[-1]
    log_dir = ARTIFACTS / "faults" / module
    db_url = databases.named(os.environ["HITL_DATABASE_URL"], f"_{module}")
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
        fresh_database(db_url)
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
    databases.drop(db_url)
