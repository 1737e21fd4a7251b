"""A private system for fault tests: its own Redis server, PostgreSQL database and processes.

Fault tests kill workers, flush the broker and restart services. They run against a system of
their own so that none of it reaches the session ``system`` other tests use: a redis-server
started here on a free port (broker, results and notifications, or a second one for
notifications), a database of their own, and worker and beat processes started with that
configuration through :class:`tests.support.system.System`.
"""

from __future__ import annotations

import json
import os
import random
import signal
import statistics
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
import sqlalchemy as sa
from celery import Celery

from hitl_workers.ops.flow_engine import ExitListener
from hitl_workers.ops.processes import Proc
from hitl_workers.store.tables import audit_events, executions, outbox, timers
from tests.support.fixtures import ARTIFACTS
from tests.support.ports import free_port
from tests.support.steps import request
from tests.support.system import System, app_for

INTERVAL_S = float(os.environ.get("HITL_RECONCILE_INTERVAL_S", "1"))
HOST = os.uname().nodename
DELIVERY_S = 1.0
DRAIN_S_PER_DEADLINE = 0.02
"""After an outage, the deadlines that passed meanwhile are all overdue at once; the slack
grows by this much for each of them: the reconciler fires at least 50 a second on a 2-core
machine that other test runs load heavily (about 300 a second when it is quiet)."""
"""Allowed from the exit's commit to the flow engine's receipt of the message: publishing
after commit (a batch of the reconciler's at a time) and the broker's hop."""


class PrivateRedis:
    """A redis-server of the test's own, without persistence, on a free port."""

    def __init__(self, name: str, log_dir: Path) -> None:
        self.port = free_port()
        self.proc = Proc(name, ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                "--save", "", "--appendonly", "no"], log_dir=log_dir)

    def url(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, db=db, socket_timeout=5)

    def start(self) -> PrivateRedis:
        self.proc.start()
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client().ping()
                return self
            except redis.ConnectionError:
                if time.monotonic() > deadline or not self.proc.alive:
                    raise RuntimeError(
                        f"redis-server did not start:\n{self.proc.tail()}") from None
                time.sleep(0.05)

    def pause(self) -> None:
        """Unreachable but not gone: connections hang until the clients' timeouts."""
        self.proc.signal_group(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.signal_group(signal.SIGCONT)

    def stop(self) -> None:
        self.resume()
        self.proc.stop()


def private_app(broker_url: str, backend_url: str) -> Celery:
    """A Celery app of this test process that talks to the private broker only."""
    return app_for(broker_url, result_backend=backend_url)


class FaultSystem(System):
    """:class:`System` whose workers are started together, then awaited together."""

    def __init__(self, app: Any, log_dir: Path, env: Mapping[str, str]) -> None:
        super().__init__(app, log_dir, env, ready_timeout_s=90)

    def start_worker(self, name: str, concurrency: int = 4, **kwargs: Any) -> Proc:
        return super().start_worker(name, concurrency, **kwargs)

    def start_workers(self, specs: Mapping[str, tuple[Sequence[str], int]]) -> list[Proc]:
        """Start the workers together, then wait until every one answers a ping."""
        procs = [self.launch_worker(name, concurrency, queues=queues)
                 for name, (queues, concurrency) in specs.items()]
        self.wait_ready(specs)
        return procs

    def restart_workers(self, names: Iterable[str]) -> None:
        self.start_workers({name: (self._specs[name]["queues"], self._specs[name]["concurrency"])
                            for name in names})


# --- observing -------------------------------------------------------------------------------

class Listener(ExitListener):
    """The stand-in flow engine, also noting the wall-clock time each exit message arrived."""

    def _on_message(self, body: Any, message: Any) -> None:
        received = time.time()
        _args, kwargs, _embed = body if isinstance(body, list) else ([], body, {})
        super()._on_message(body, message)
        with self._cond:
            self.exits[str(kwargs.get("execution_id"))][-1]["_received"] = received

    def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        with self._cond:
            return {k: list(v) for k, v in self.exits.items()}


class TaskEvents:
    """Celery task events (workers send them for Flower), collected per task id: shows how
    often a wake-up ran and what it answered, whatever the log format."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.by_id: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self._lock = threading.Lock()
        self._receiver: Any = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="task-events")

    def start(self) -> TaskEvents:
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        if self._receiver is not None:
            self._receiver.should_stop = True
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while self._receiver is None or not self._receiver.should_stop:
            try:
                with self.app.connection_for_read() as conn:
                    self._receiver = self.app.events.Receiver(
                        conn, handlers={"*": self._on_event})
                    self._ready.set()
                    self._receiver.capture(limit=None, timeout=None, wakeup=False)
            except Exception:  # broker connections dropped by a test: reconnect
                time.sleep(0.3)

    def _on_event(self, event: dict[str, Any]) -> None:
        if event.get("type", "").startswith("task-") and event.get("uuid"):
            with self._lock:
                self.by_id[event["uuid"]].append(event)

    def of(self, task_id: str, kind: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.by_id.get(task_id, [])
                    if kind is None or e["type"] == kind]

    def failures(self) -> list[dict[str, Any]]:
        with self._lock:
            return [e for events in self.by_id.values() for e in events
                    if e["type"] == "task-failed"]


class Db:
    """Reads the private database directly: the tests assert on what the system stored."""

    def __init__(self, url: str) -> None:
        self.engine = sa.create_engine(url, pool_pre_ping=True)

    def rows(self, query: Any) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(query))

    def executions(self, ids: Iterable[str]) -> dict[str, Any]:
        ids = list(ids)
        return {r.execution_id: r for r in self.rows(
            sa.select(executions).where(executions.c.execution_id.in_(ids)))}

    def timers(self, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = defaultdict(dict)
        for r in self.rows(sa.select(timers).where(timers.c.execution_id.in_(list(ids)))):
            found[r.execution_id][r.kind] = r
        return found

    def exit_outbox(self, ids: Iterable[str]) -> dict[str, list[Any]]:
        found: dict[str, list[Any]] = defaultdict(list)
        for r in self.rows(sa.select(outbox).where(
                outbox.c.execution_id.in_(list(ids)), outbox.c.kind == "exit")):
            found[r.execution_id].append(r)
        return found

    def notify_outbox(self, ids: Iterable[str]) -> list[Any]:
        return self.rows(sa.select(outbox).where(
            outbox.c.execution_id.in_(list(ids)), outbox.c.kind == "notify"))

    def audit_counts(self, ids: Iterable[str], kinds: Sequence[str]) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(kinds, 0))
        for r in self.rows(sa.select(audit_events.c.execution_id, audit_events.c.kind).where(
                audit_events.c.execution_id.in_(list(ids)), audit_events.c.kind.in_(kinds))):
            counts[r.execution_id][r.kind] += 1
        return counts

    def count_state(self, ids: Iterable[str], state: str) -> int:
        return int(self.rows(sa.select(sa.func.count()).select_from(executions).where(
            executions.c.execution_id.in_(list(ids)), executions.c.state == state))[0][0])


# --- steps with deadlines --------------------------------------------------------------------

@dataclass
class Step:
    execution_id: str
    countdown_s: float | None
    timeout_s: float | None

    @property
    def expected_exit(self) -> str:
        if self.countdown_s is not None and (self.timeout_s is None
                                             or self.countdown_s <= self.timeout_s):
            return "timer_action"
        return "timeout"


def mixed_steps(count: int, low_s: float, high_s: float, *, lead_s: float = 0.0,
                seed: int = 7) -> list[Step]:
    """A third with a countdown only, a third with a timeout only, a third with both, each
    deadline ``low_s``-``high_s`` away.

    Deadlines run from each step's dispatch, and dispatching hundreds takes a while here:
    ``lead_s`` (the expected time to dispatch one more step) is added once for every step
    sent after this one, so that all of them are still waiting when the last is dispatched.
    """
    rng = random.Random(seed)
    steps = []
    for i in range(count):
        lead = round((count - 1 - i) * lead_s, 1)
        countdown = round(rng.uniform(low_s, high_s) + lead, 1) if i % 3 != 1 else None
        timeout = round(rng.uniform(low_s, high_s) + lead, 1) if i % 3 != 0 else None
        steps.append(Step(f"fx-{uuid.uuid4().hex[:16]}", countdown, timeout))
    return steps


def dispatch_rate(app: Celery, team: str, reply_to: dict[str, str], count: int = 24
                  ) -> float:
    """Seconds the system takes to dispatch one more step when many are sent at once (a
    warm-up batch whose steps wait an hour; they are not part of any check)."""
    warm_up = [Step(f"fx-warm-{uuid.uuid4().hex[:12]}", None, 3600.0) for _ in range(count)]
    return dispatch(app, warm_up, team, reply_to) / count


def step_request(step: Step, team: str, reply_to: dict[str, str]) -> dict[str, Any]:
    settings: dict[str, Any] = {"timeout": f"{step.timeout_s}s" if step.timeout_s else "1h"}
    if step.countdown_s is not None:
        settings["popup"] = {"text": "help", "timer": {"auto_action_timeout":
                                                       f"{step.countdown_s}s"}}
    return request(team, reply_to, execution_id=step.execution_id, **settings)


def dispatch(app: Celery, steps: Sequence[Step], team: str, reply_to: dict[str, str],
             timeout: float = 90) -> float:
    """Send every request at once and wait until each is answered; returns the seconds taken.
    Every step must be waiting (or already exited by one of its deadlines)."""
    started = time.monotonic()
    results = [app.send_task("hitl.request_assistance", kwargs=step_request(s, team, reply_to))
               for s in steps]
    for result in results:
        answer = result.get(timeout=timeout)
        assert answer["state"] in ("waiting", "exited"), answer
        assert answer["exit"] in (None, "timer_action", "timeout"), answer
    return time.monotonic() - started


def add_agents(app: Celery, team: str, count: int = 3) -> list[str]:
    ids = [f"fx-agent-{uuid.uuid4().hex[:8]}" for _ in range(count)]
    for agent_id in ids:
        answer = app.send_task("hitl.upsert_agent", kwargs={
            "agent_id": agent_id, "name": agent_id, "status": "available",
            "rule_groups": [[team]]}).get(timeout=60)
        assert answer == {"agent_id": agent_id, "status": "available"}
    return ids


def wait_until(check: Callable[[], Any], timeout: float, what: str,
               interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# --- the guarantees --------------------------------------------------------------------------

@dataclass
class Report:
    """What a fault test measured, written to the artifacts for docs/guarantees.md."""

    name: str
    steps: int = 0
    lateness_s: list[float] = field(default_factory=list)
    """exited_at − max(deadline, recovered_at): the promise is about this."""
    raw_lateness_s: list[float] = field(default_factory=list)
    """exited_at − deadline, outage included."""
    delivery_lateness_s: list[float] = field(default_factory=list)
    """exit message received − max(deadline, recovered_at)."""
    duplicate_messages: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        def dist(values: list[float]) -> dict[str, float] | None:
            if not values:
                return None
            ordered = sorted(values)
            return {"p50": round(statistics.median(ordered), 3),
                    "p99": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 3),
                    "max": round(ordered[-1], 3)}

        return {"test": self.name, "steps": self.steps,
                "reconcile_interval_s": INTERVAL_S,
                "lateness_from_recovery_s": dist(self.lateness_s),
                "lateness_raw_s": dist(self.raw_lateness_s),
                "exit_message_lateness_s": dist(self.delivery_lateness_s),
                "duplicate_exit_messages": self.duplicate_messages, **self.extra}

    def write(self) -> dict[str, Any]:
        summary = self.summary()
        path = ARTIFACTS / "faults" / f"{self.name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(summary, indent=2))
        print(json.dumps(summary))
        return summary


def assert_each_exits_once_on_time(db: Db, listener: Listener, steps: Sequence[Step],
                                   report: Report, *, slack_s: float,
                                   recovered_at: datetime | None = None,
                                   timeout: float = 60) -> None:
    """Every step exited exactly once, by the deadline that came first, and no later than
    that deadline (or ``recovered_at``, when the system was down at the deadline) + one
    reconcile interval + ``slack_s``; its exit message reached the flow engine at most
    :data:`DELIVERY_S` after that, and every copy of it is identical (a copy is allowed:
    flow engines deduplicate on execution_id)."""
    ids = [s.execution_id for s in steps]
    wait_until(lambda: db.count_state(ids, "exited") == len(ids), timeout,
               "every step to exit")
    wait_until(lambda: all(listener.count_for(i) for i in ids), timeout,
               "every exit message")
    time.sleep(INTERVAL_S * 3)  # a late duplicate would arrive now
    rows, deadlines = db.executions(ids), db.timers(ids)
    outbox_rows = db.exit_outbox(ids)
    audits = db.audit_counts(ids, ["exit_recorded", "timer_fired", "timeout_fired"])
    messages = listener.snapshot()
    report.steps = len(ids)
    bound_s = INTERVAL_S + slack_s
    late: list[str] = []
    for step in steps:
        row = rows[step.execution_id]
        assert (row.state, row.exit) == ("exited", step.expected_exit), (step, row)
        fired = "countdown" if step.expected_exit == "timer_action" else "timeout"
        timer_rows = deadlines[step.execution_id]
        assert timer_rows[fired].state == "fired"
        assert all(t.state == "cancelled" for k, t in timer_rows.items() if k != fired)
        assert len(outbox_rows[step.execution_id]) == 1
        assert outbox_rows[step.execution_id][0].sent_at is not None
        counts = audits[step.execution_id]
        assert counts["exit_recorded"] == 1, (step, counts)
        assert counts["timer_fired"] + counts["timeout_fired"] == 1, (step, counts)
        copies = messages[step.execution_id]
        assert {(m["exit"], m["exited_at"]) for m in copies} == {
            (step.expected_exit, row.ended_at.isoformat())}, copies
        report.duplicate_messages += len(copies) - 1

        due = timer_rows[fired].due_at
        start = max(due, recovered_at) if recovered_at else due
        lateness = (row.ended_at - start).total_seconds()
        report.lateness_s.append(lateness)
        report.raw_lateness_s.append((row.ended_at - due).total_seconds())
        report.delivery_lateness_s.append(min(m["_received"] for m in copies)
                                          - start.timestamp())
        if lateness > bound_s:
            late.append(f"{step.execution_id}: {lateness:.2f}s after {start.isoformat()}")
        if report.delivery_lateness_s[-1] > bound_s + DELIVERY_S:
            late.append(f"{step.execution_id}: exit message "
                        f"{report.delivery_lateness_s[-1]:.2f}s after {start.isoformat()}")
    summary = report.write()
    assert not late, (f"{len(late)} steps exited later than deadline + {bound_s:.1f}s "
                      f"({summary}): {late[:10]}")


def lose_the_broker(server: PrivateRedis) -> int:
    """``FLUSHDB`` of the broker's database (0), and every other connection to it dropped, as
    a Redis restarting empty would: queued messages, the record of unacked ones and the
    wake-ups workers hold in memory are all gone. Returns how many connections were dropped."""
    admin = server.client(0)
    admin.flushdb()
    me = admin.client_id()
    dropped = 0
    for client in admin.client_list():
        if client["db"] == "0" and int(client["id"]) != me:
            admin.client_kill_filter(_id=client["id"])
            dropped += 1
    return dropped


def workers_answer(app: Celery, names: Iterable[str]) -> bool:
    """Whether every named worker answers a ping (after a broker loss: they reconnected)."""
    nodes = {f"{name}@{HOST}" for name in names}
    try:  # this process's own broker connections may have been dropped too
        replies = app.control.ping(destination=list(nodes), timeout=0.5) or []
    except Exception:
        return False
    return nodes <= {node for reply in replies for node in reply}


def overdue(db: Db, now: datetime) -> int:
    """Executions with a pending deadline due by ``now``."""
    return int(db.rows(sa.select(sa.func.count(sa.distinct(timers.c.execution_id))).where(
        timers.c.state == "pending", timers.c.due_at <= now))[0][0])


def deadlines_between(db: Db, steps: Sequence[Step], start: datetime, end: datetime) -> int:
    """Steps whose first deadline fell in ``(start, end]``: during an outage, the backlog
    the system finds when it returns."""
    found = db.timers([s.execution_id for s in steps])
    return sum(start < min(t.due_at for t in found[s.execution_id].values()) <= end
               for s in steps)


def utc_now() -> datetime:
    return datetime.now(UTC)


def redeliver_unacked(broker_url: str, visibility_timeout_s: float) -> int:
    """Run the Redis transport's visibility sweep now: every unacked message (an ETA wake-up
    a worker holds) older than ``visibility_timeout_s`` is put back on its queue, while the
    worker that holds it keeps its copy. Every consumer of the broker runs this sweep from
    time to time (a worker about every 100 s); the test runs it at a moment it chooses.
    Returns how many messages were redelivered."""
    from kombu import Connection

    with Connection(broker_url,
                    transport_options={"visibility_timeout": visibility_timeout_s}) as conn:
        channel: Any = conn.default_channel
        client = channel.client
        ceiling = time.time() - visibility_timeout_s
        due = client.zcount(channel.unacked_index_key, 0, ceiling)
        channel.qos.restore_visible(num=10_000, interval=1)
        left = client.zcount(channel.unacked_index_key, 0, ceiling)
    return int(due - left)
