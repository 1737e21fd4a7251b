"""The one worker launcher: a running hitl_workers system of worker and beat processes.

Every tier that runs a system starts its processes here, with the very commands the Procfile
gives (:mod:`hitl_workers.ops.processes`): the session's system (tests/support/fixtures.py),
the fault tests' private systems, the scale-out and RabbitMQ systems beside the session's.

A second system beside the session's gets its own broker and its own database (``env``): the
session's worker would otherwise take the second system's tasks, and each beat's reconciler
fires every overdue deadline and re-sends every unsent exit in its database, publishing them
on its own broker, where the other system's flow engine never looks.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from celery import Celery

from hitl_workers.ops.processes import ALL_QUEUES, Proc, beat_cmd, wait_for_workers, worker_cmd

HOST = os.uname().nodename


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


class System:
    """Worker and beat processes, restartable and killable by tests.

    ``env`` is added to every process's environment (a system with its own broker and
    database); a worker may also run under a command ``prefix`` (a network namespace) and on a
    named ``host``, when its process (and log file) is named by its node name, ``name@host``.
    """

    def __init__(self, app: Any, log_dir: Path, env: Mapping[str, str] | None = None,
                 *, ready_timeout_s: float = 60.0, cwd: Path | None = None) -> None:
        self.app = app
        self.log_dir = log_dir
        self.env = dict(env or {})
        self.cwd = cwd
        self.ready_timeout_s = ready_timeout_s
        self.procs: dict[str, Proc] = {}
        self.nodes: dict[str, str] = {}
        self._specs: dict[str, dict[str, Any]] = {}

    def launch_worker(self, name: str, concurrency: int = 6, *, host: str | None = None,
                      queues: Sequence[str] = ALL_QUEUES, prefix: Sequence[str] = (),
                      env: Mapping[str, str] | None = None, **kwargs: Any) -> Proc:
        """Start a worker process without waiting for it; its key in :attr:`procs`."""
        node = f"{name}@{host or HOST}"
        key = node if host else name
        self._specs[key] = {"name": name, "concurrency": concurrency, "host": host,
                            "queues": queues, "prefix": prefix, "env": env, **kwargs}
        proc = Proc(key, [*prefix, *worker_cmd(node, queues=queues, concurrency=concurrency,
                                               **kwargs)],
                    env={**self.env, **(env or {})}, log_dir=self.log_dir,
                    cwd=self.cwd).start()
        self.procs[key] = proc
        self.nodes[key] = node
        return proc

    def wait_ready(self, keys: Iterable[str]) -> None:
        """Block until each named worker answers a ping (raises with its log if one died)."""
        keys = list(keys)
        wait_for_workers(self.app, [self.nodes[k] for k in keys],
                         timeout=self.ready_timeout_s, procs=[self.procs[k] for k in keys])

    def start_worker(self, name: str, concurrency: int = 6, **kwargs: Any) -> Proc:
        """Start a worker and wait until it answers."""
        proc = self.launch_worker(name, concurrency, **kwargs)
        self.wait_ready([proc.name])
        return proc

    def restart_worker(self, key: str) -> Proc:
        """Start worker ``key`` again as it was started (its supervisor bringing it back)."""
        return self.start_worker(**self._specs[key])

    def worker_names(self) -> list[str]:
        return [key for key in self.procs if key in self._specs]

    def start_beat(self, name: str = "beat") -> Proc:
        proc = Proc(name, beat_cmd(self.log_dir / f"{name}-schedule"), env=self.env,
                    log_dir=self.log_dir, cwd=self.cwd).start()
        self.procs[name] = proc
        return proc

    def kill(self, names: Iterable[str]) -> None:
        """``kill -9`` of each named process group (a worker and its pool children)."""
        for name in names:
            self.procs[name].kill()

    def stop_all(self) -> None:
        for proc in self.procs.values():
            proc.stop()
