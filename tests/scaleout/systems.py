"""A second system beside the session's: its own broker, its own database, its own workers.

The scale-out and RabbitMQ tests run next to the session's system (tests/support/fixtures.py),
which keeps its worker and beat until the session ends. Two systems must share neither a broker
(the session's worker would take this system's tasks) nor a database (each beat's reconciler
fires every overdue deadline and re-sends every unsent exit in its database, and would publish
them on its own broker, where this system's flow engine never looks).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from celery import Celery
from sqlalchemy.engine import make_url

from hitl_workers.ops.processes import Proc, beat_cmd, wait_for_workers, worker_cmd
from tests.support.fixtures import System


def fresh_database(base_url: str, suffix: str) -> str:
    """Drop and re-create the database ``<name of base_url><suffix>``, migrated; its URL."""
    from hitl_workers.store.migrate import upgrade

    parsed = make_url(base_url)
    url = parsed.set(database=f"{parsed.database}{suffix}")
    admin = sa.create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)')
            conn.exec_driver_sql(f'CREATE DATABASE "{url.database}"')
    except sa.exc.OperationalError as exc:
        pytest.fail(f"PostgreSQL is required and not reachable: {exc!r}", pytrace=False)
    finally:
        admin.dispose()
    text = url.render_as_string(hide_password=False)
    upgrade(text)
    return text


def app_for(broker_url: str, **conf: Any) -> Celery:
    """A client app with the project's configuration on another broker, as a flow engine or
    agent UI of that system would have. ``celeryconfig.settings_for_broker`` supplies what
    differs between Redis and RabbitMQ (queue declarations, transport options)."""
    import celeryconfig
    from hitl_workers.settings import get_settings

    app = Celery("hitl_workers_client", set_as_current=False)
    app.config_from_object("celeryconfig")
    app.conf.update(broker_url=broker_url,
                    **celeryconfig.settings_for_broker(broker_url, get_settings()), **conf)
    return app


class EnvSystem(System):
    """:class:`System` whose processes get their own environment (``HITL_BROKER_URL``,
    ``HITL_DATABASE_URL``, …) and may run under a command prefix (a network namespace)."""

    def __init__(self, app: Any, log_dir: Path, env: Mapping[str, str]) -> None:
        super().__init__(app, log_dir)
        self.env = dict(env)
        self.nodes: dict[str, str] = {}
        self._specs: dict[str, dict[str, Any]] = {}

    def start_worker(self, name: str, concurrency: int = 6, *, host: str | None = None,
                     prefix: Sequence[str] = (), env: Mapping[str, str] | None = None,
                     **kwargs: Any) -> Proc:
        """Start a worker and wait until it answers. On a ``host`` its process (and log file)
        is named by its node name, ``name@host``."""
        node = f"{name}@{host or os.uname().nodename}"
        key = node if host else name
        self._specs[key] = {"name": name, "concurrency": concurrency, "host": host,
                            "prefix": prefix, "env": env, **kwargs}
        proc = Proc(key, [*prefix, *worker_cmd(node, concurrency=concurrency, **kwargs)],
                    env={**self.env, **(env or {})}, log_dir=self.log_dir).start()
        self.procs[key] = proc
        self.nodes[key] = node
        wait_for_workers(self.app, [node], procs=[proc], timeout=60)
        return proc

    def restart_worker(self, key: str) -> Proc:
        """Start worker ``key`` again as it was started (its supervisor bringing it back)."""
        return self.start_worker(**self._specs[key])

    def start_beat(self) -> Proc:
        proc = Proc("beat", beat_cmd(self.log_dir / "beat-schedule"), env=self.env,
                    log_dir=self.log_dir).start()
        self.procs["beat"] = proc
        return proc
