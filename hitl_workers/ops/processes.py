"""Starting and stopping the system's processes: used by ``hitl-workers run``, the tests and
the benchmarks, so all three run the very commands the Procfile and docs give."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from hitl_workers.domain.names import QUEUE_NAMES
from hitl_workers.settings import Settings

ALL_QUEUES = QUEUE_NAMES


def celery_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "hitl_workers.app", *args]


def worker_cmd(name: str, queues: Sequence[str] = ALL_QUEUES, concurrency: int = 4,
               pool: str = "prefork", loglevel: str = "INFO",
               extra: Sequence[str] = ()) -> list[str]:
    return celery_cmd("worker", "-Q", ",".join(queues), "-n", name, "-c", str(concurrency),
                      "-P", pool, "--loglevel", loglevel, "--without-mingle",
                      "--without-gossip", *extra)


def beat_cmd(schedule_file: str | Path, loglevel: str = "INFO") -> list[str]:
    return celery_cmd("beat", "--schedule", str(schedule_file), "--loglevel", loglevel)


def flower_cmd(settings: Settings, *, port: int, address: str = "127.0.0.1") -> list[str]:
    """``celery -A hitl_workers.app flower …``, with ``--basic-auth`` from
    ``HITL_FLOWER_BASIC_AUTH`` when it is set (the Procfile and deploy/ do the same)."""
    args = ["flower", f"--port={port}", f"--address={address}"]
    if settings.flower_basic_auth:
        args.append(f"--basic-auth={settings.flower_basic_auth}")
    return celery_cmd(*args)


class Proc:
    """A child process in its own process group, with its output in a log file."""

    def __init__(self, name: str, cmd: Sequence[str], *, env: Mapping[str, str] | None = None,
                 log_dir: str | Path = ".", cwd: str | Path | None = None) -> None:
        self.name = name
        self.cmd = list(cmd)
        self.env = {**os.environ, **(env or {})}
        self.log_path = Path(log_dir) / f"{name}.log"
        self.cwd = cwd
        self.popen: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> Proc:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115  (closed in stop)
        self.popen = subprocess.Popen(self.cmd, env=self.env, stdout=self._log,
                                      stderr=subprocess.STDOUT, cwd=self.cwd,
                                      start_new_session=True)
        return self

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal_group(self, sig: int) -> None:
        if self.popen is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)

    def kill(self) -> None:
        """``kill -9`` of the whole process group: the worker and its pool children."""
        self.signal_group(signal.SIGKILL)
        if self.popen is not None:
            self.popen.wait(timeout=10)
        self._close_log()

    def stop(self, timeout: float = 20.0) -> None:
        if self.popen is None:
            return
        if self.alive:
            self.signal_group(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def wait_for_workers(app: Any, names: Sequence[str], timeout: float = 30.0,
                     procs: Sequence[Proc] = ()) -> None:
    """Block until every named worker answers a ping; raise with its log if one dies."""
    deadline = time.monotonic() + timeout
    pending = set(names)
    while pending:
        for proc in procs:
            if not proc.alive:
                raise RuntimeError(f"{proc.name} exited early:\n{proc.tail()}")
        replies = app.control.ping(destination=list(pending), timeout=0.5) or []
        for reply in replies:
            pending -= set(reply)
        if pending and time.monotonic() > deadline:
            logs = "\n".join(p.tail() for p in procs)
            raise TimeoutError(f"workers {sorted(pending)} not ready in {timeout}s\n{logs}")
