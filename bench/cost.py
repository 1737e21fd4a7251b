"""What a claimed step costs PostgreSQL, counted, not guessed: round trips and statements.

    .venv/bin/python -m bench.cost [--steps 200] [--profile]

Runs whole steps (``hitl.request_assistance`` then ``hitl.claim``, each through its task's own
code, publishing after commit to a real broker and Redis) in this one process, with a counter
on the database engine, and prints per claimed step:

- **statements**: SQL statements the server runs (``BEGIN``/``COMMIT`` included; a string
  carrying several statements counts each);
- **round trips**: messages the client waits on — each cursor execute, each commit or
  rollback the driver sends, and psycopg2's implicit ``BEGIN`` (sent on its own before the
  first statement of a transaction unless the engine folds it into that statement);
- **transactions**: commits.

Deterministic (the same on a loaded machine), so it is the figure to watch while changing the
engine; ``--profile`` adds a cProfile of the loop (CPU by function). The same counter runs
inside the throughput benchmark's summary (:mod:`bench.engine`).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from bench.common import configure, flush_redis, fresh_database

_STATEMENT_SPLIT = re.compile(r";\s*(?=\S)")


@dataclass
class Counts:
    statements: int = 0
    round_trips: int = 0
    commits: int = 0
    kinds: dict[str, int] = field(default_factory=dict)

    def per(self, steps: int) -> str:
        return (f"{self.round_trips / steps:.1f} round trips, {self.statements / steps:.1f} "
                f"statements, {self.commits / steps:.1f} transactions")


class StatementCounter:
    """Counts what an Engine sends PostgreSQL (see the module docstring for the rules)."""

    def __init__(self) -> None:
        self.counts = Counts()
        self._engines: list[Any] = []

    def attach(self, engine: Any) -> None:
        import sqlalchemy as sa

        sa.event.listen(engine, "before_cursor_execute", self._execute)
        sa.event.listen(engine, "begin", self._begin)
        sa.event.listen(engine, "commit", self._commit)
        sa.event.listen(engine, "rollback", self._rollback)
        self._engines.append(engine)

    def reset(self) -> Counts:
        counts, self.counts = self.counts, Counts()
        try:
            from hitl_workers.store import wire
        except ImportError:  # an engine from before store.wire (a "before" run)
            return counts
        folded = wire.stats
        counts.round_trips += folded.round_trips - self._folded[0]
        counts.statements += folded.statements - self._folded[1]
        counts.commits += folded.commits - self._folded[2]
        self._folded = (folded.round_trips, folded.statements, folded.commits)
        return counts

    _folded = (0, 0, 0)

    def _execute(self, conn: Any, cursor: Any, statement: str, parameters: Any,
                 context: Any, executemany: bool) -> None:
        if _autocommit(conn):
            return  # a folded transaction: hitl_workers.store.wire counts what it sends
        parts = [p for p in _STATEMENT_SPLIT.split(statement.strip()) if p.strip()]
        many = len(parameters) if executemany and isinstance(parameters, list | tuple) else 1
        self.counts.statements += len(parts) * many
        self.counts.round_trips += many
        for part in parts:
            word = part.split(None, 1)[0].upper() if part.split() else "?"
            self.counts.kinds[word] = self.counts.kinds.get(word, 0) + many

    def _begin(self, conn: Any) -> None:
        # psycopg2 outside autocommit sends BEGIN by itself before the first statement.
        if not _autocommit(conn):
            self.counts.statements += 1
            self.counts.round_trips += 1
            self.counts.kinds["BEGIN"] = self.counts.kinds.get("BEGIN", 0) + 1

    def _commit(self, conn: Any) -> None:
        if not _autocommit(conn):
            self.counts.statements += 1
            self.counts.round_trips += 1
            self.counts.commits += 1
            self.counts.kinds["COMMIT"] = self.counts.kinds.get("COMMIT", 0) + 1

    def _rollback(self, conn: Any) -> None:
        if not _autocommit(conn):
            self.counts.statements += 1
            self.counts.round_trips += 1


def _autocommit(conn: Any) -> bool:
    # An engine that manages BEGIN/COMMIT itself runs the driver in autocommit: its own
    # statements are counted as they are executed.
    if conn.dialect.name != "postgresql" or conn.invalidated:
        return False
    return bool(getattr(conn.connection.dbapi_connection, "autocommit", False))


def run_steps(steps: int, *, counter: StatementCounter | None = None) -> tuple[Counts, float]:
    """``steps`` claimed steps in this process; returns the counts and the CPU seconds."""
    from celery._state import _set_task_join_will_block

    from hitl_workers.store.db import get_engine
    from hitl_workers.tasks import agents as agent_tasks
    from hitl_workers.tasks import events, requests

    # Run the tasks as a prefork pool process does: there, Celery knows a task cannot wait on
    # another's result, and its Redis result backend does not SUBSCRIBE to the result of
    # every task sent (the exit, the wake-up). Without this, this process pays ~0.3 ms per
    # step and keeps two channels per step that no worker keeps.
    _set_task_join_will_block(True)
    counter = counter or StatementCounter()
    counter.attach(get_engine())
    agent_tasks.upsert_agent.run(agent_id="cost-agent", status="available",
                                 rule_groups=[["team:cost"]])
    reply = {"task": "flow.exit", "queue": f"flow-cost-{uuid.uuid4().hex[:6]}"}

    split = {"dispatch": Counts(), "claim": Counts()}

    def add(into: Counts, counts: Counts) -> None:
        into.round_trips += counts.round_trips
        into.statements += counts.statements
        into.commits += counts.commits

    def one_step() -> None:
        execution_id = f"cost-{uuid.uuid4().hex}"
        add(total, counter.reset())
        requests.request_assistance.run(
            execution_id=execution_id, conversation_id=f"conv-{execution_id}",
            conversation={"tags": ["team:cost"], "contact": {"name": "Ann"}},
            settings={"timeout": "5m", "popup": {"text": "**Cost** step",
                                                 "timer": {"auto_action_timeout": "2m"}}},
            reply_to=reply)
        add(split["dispatch"], counts := counter.reset())
        add(total, counts)
        answer = events.claim.run(execution_id=execution_id, agent_id="cost-agent")
        add(split["claim"], counts := counter.reset())
        add(total, counts)
        if answer["outcome"] != "claimed":
            raise SystemExit(f"claim answered {answer}")

    total = Counts()
    for _ in range(10):  # warm up: statement caches, connections
        one_step()
    total = Counts()
    split.update(dispatch=Counts(), claim=Counts())
    servers = _ServerCpu()
    servers.read()
    cpu = time.process_time()
    for _ in range(steps):
        one_step()
    cpu = time.process_time() - cpu
    add(total, counter.reset())  # what ran after the last claim (sent marks flushed by then)
    total.split = split  # type: ignore[attr-defined]
    total.servers = servers.read()  # type: ignore[attr-defined]
    return total, cpu


def run_fires(fires: int) -> tuple[float, dict[str, float]]:
    """``fires`` deadlines fired through ``hitl.fire_timer``'s own code in this process (each
    a waiting step offered to one agent: the transaction, the exit, the withdrawal); returns
    this process's CPU seconds and the servers' (:class:`_ServerCpu`) for the fires alone."""
    from celery._state import _set_task_join_will_block

    from hitl_workers.tasks import agents as agent_tasks
    from hitl_workers.tasks import requests, timers

    _set_task_join_will_block(True)  # as in a pool process (see run_steps)
    agent_tasks.upsert_agent.run(agent_id="fire-agent", status="available",
                                 rule_groups=[["team:fire"]])
    reply = {"task": "flow.exit", "queue": f"flow-fire-{uuid.uuid4().hex[:6]}"}
    ids = []
    for _ in range(fires + 10):
        execution_id = f"fire-{uuid.uuid4().hex}"
        requests.request_assistance.run(
            execution_id=execution_id, conversation_id=f"conv-{execution_id}",
            conversation={"tags": ["team:fire"], "contact": {"name": "Ann"}},
            settings={"timeout": "1s", "popup": {"text": "**Fire** step"}}, reply_to=reply)
        ids.append(execution_id)
    time.sleep(1.5)  # every deadline is due
    for execution_id in ids[:10]:  # warm up
        timers.fire_timer.run(execution_id=execution_id, kind="timeout")
    servers = _ServerCpu()
    servers.read()
    cpu = time.process_time()
    for execution_id in ids[10:]:
        if timers.fire_timer.run(execution_id=execution_id, kind="timeout") != "fired":
            raise SystemExit(f"{execution_id}: not fired")
    return time.process_time() - cpu, servers.read()


class _ServerCpu:
    """CPU seconds the benchmark database's PostgreSQL backends (only this process connects
    to it) and its Redis server used between two reads, by kind."""

    def __init__(self) -> None:
        from bench.engine import OwnCpu

        self._own = OwnCpu()
        self._last: dict[str, float] = {}

    def read(self) -> dict[str, float]:
        self._own()
        now = {k: v for k, v in self._own.by_kind().items() if k in ("PostgreSQL", "Redis")}
        spent = {k: v - self._last.get(k, 0.0) for k, v in now.items()}
        self._last = now
        return spent


def result_subscriptions() -> int | None:
    """Channels this process's result consumer listens on (None: not a Redis result backend)."""
    from hitl_workers.app import app

    consumer = getattr(app.backend, "result_consumer", None)
    if consumer is None:
        return None
    pubsub = getattr(consumer, "_pubsub", None)
    return 0 if pubsub is None else len(pubsub.channels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--profile", action="store_true", help="print a cProfile of the loop")
    parser.add_argument("--fires", type=int, default=0,
                        help="instead: the CPU of this many fired deadlines (hitl.fire_timer)")
    args = parser.parse_args()
    configure()
    fresh_database()
    flush_redis()
    if args.fires:
        cpu_s, servers = run_fires(args.fires)
        print(f"per fired deadline ({args.fires} fires, this process): "
              f"{cpu_s / args.fires * 1000:.2f} ms CPU in this process; servers: " + ", ".join(
                  f"{kind} {spent / args.fires * 1000:.2f} ms"
                  for kind, spent in sorted(servers.items())))
        return
    profiler = cProfile.Profile() if args.profile else None
    if profiler:
        profiler.enable()
    counts, cpu_s = run_steps(args.steps)
    if profiler:
        profiler.disable()
    print(f"per claimed step (request + claim, {args.steps} steps, this process): "
          f"{counts.per(args.steps)}; {cpu_s / args.steps * 1000:.1f} ms CPU in this process")
    servers = counts.servers  # type: ignore[attr-defined]
    print("  server CPU per step: " + ", ".join(
        f"{kind} {spent / args.steps * 1000:.1f} ms" for kind, spent in sorted(servers.items())))
    for name, part in counts.split.items():  # type: ignore[attr-defined]
        print(f"  {name:9} {part.per(args.steps)}")
    subscribed = result_subscriptions()
    if subscribed is not None:
        print(f"result-backend channels this process is still subscribed to: {subscribed} "
              f"({subscribed / (args.steps + 10):.1f} per step; 0 in a prefork worker)")
    if profiler:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(40)
        print(out.getvalue())


if __name__ == "__main__":
    main()
