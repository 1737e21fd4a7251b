"""What one fired deadline costs, in one process: CPU of the task's code, CPU of its PostgreSQL
backend, statements and round trips, and (``--profile``) where the task's CPU goes.

    .venv/bin/python -m bench.deadline_cost [--deadlines 500] [--profile]

Dispatches ``--deadlines`` steps whose deadlines (half step ``timeout``, half popup
``auto_action_timeout``, as :mod:`bench.timer_lateness` has them) fall a moment later, waits
for them, then runs ``hitl.fire_timer`` for each one through the task's own code, as a prefork
pool process runs it (publishing the exit and the withdrawal after commit to a real broker and
Redis). Nothing else runs the wake-ups: no worker consumes the queue, no beat ticks.

Printed per fired deadline: this process's CPU (``time.process_time``), the CPU of its
PostgreSQL backend (``/proc/<pid>/stat`` of ``pg_backend_pid()``, when the server is local),
the statement counter of :mod:`bench.cost` and this process's round trips to Redis (the
broker, the result store, the notification streams). Deterministic enough to compare two
commits on a loaded machine; the whole-system figure (workers, broker, beat) is
:mod:`bench.timer_lateness`'s.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import time
import uuid
from pathlib import Path
from typing import Any

from bench.common import configure, flush_redis, fresh_database
from bench.cost import Counts, StatementCounter

TAG, AGENT = "team:deadline", "deadline-agent"


def _backend_cpu_s(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _backend_pids() -> list[int]:
    """The PostgreSQL backends of this process's pooled connections (checked out together,
    so that each is a different one)."""
    from contextlib import ExitStack

    from hitl_workers.store.db import get_engine

    engine = get_engine()
    with ExitStack() as stack:
        conns = [stack.enter_context(engine.connect()) for _ in range(engine.pool.checkedin())]
        return [int(c.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()) for c in conns]


def dispatch(count: int, prefix: str, lead_s: float) -> list[tuple[str, str]]:
    """``count`` steps, each due ``lead_s`` after its dispatch."""
    from hitl_workers.tasks import requests

    reply = {"task": "flow.exit", "queue": f"flow-deadline-{uuid.uuid4().hex[:6]}"}
    due = []
    for i in range(count):
        execution_id = f"{prefix}{i}"
        settings: dict[str, Any] = {"timeout": lead_s}
        kind = "timeout"
        if i % 2:
            settings = {"timeout": lead_s + 600, "popup": {
                "text": "**Deadline** step", "timer": {"auto_action_timeout": lead_s}}}
            kind = "countdown"
        requests.request_assistance.run(
            execution_id=execution_id, conversation_id=f"conv-{execution_id}",
            conversation={"tags": [TAG]}, settings=settings, reply_to=reply)
        due.append((execution_id, kind))
    return due


class RedisRoundTrips:
    """Counts the round trips this process makes to Redis (broker, results, notifications):
    each command or pipeline redis-py sends, counted where it is written to the socket."""

    def __init__(self) -> None:
        import redis.connection

        self.count = 0
        cls = redis.connection.AbstractConnection
        original = cls.send_packed_command
        counter = self

        def send_packed_command(conn: Any, command: Any, check_health: bool = True) -> None:
            counter.count += 1
            original(conn, command, check_health)

        cls.send_packed_command = send_packed_command  # type: ignore[method-assign]

    def reset(self) -> int:
        count, self.count = self.count, 0
        return count


def fire_all(due: list[tuple[str, str]]) -> list[str]:
    from hitl_workers.tasks import timers

    return [timers.fire_timer.run(execution_id=e, kind=k) for e, k in due]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deadlines", type=int, default=500)
    parser.add_argument("--profile", action="store_true", help="print a cProfile of the firing")
    parser.add_argument("--top", type=int, default=45)
    args = parser.parse_args()
    configure()
    fresh_database()
    flush_redis()

    from celery._state import _set_task_join_will_block

    from hitl_workers.store.db import get_engine
    from hitl_workers.tasks import agents as agent_tasks

    _set_task_join_will_block(True)  # as a prefork pool process runs tasks (see bench.cost)
    agent_tasks.upsert_agent.run(agent_id=AGENT, status="available", rule_groups=[[TAG]])
    counter = StatementCounter()
    counter.attach(get_engine())
    redis_trips = RedisRoundTrips()

    lead = 1.0
    warm = dispatch(20, f"dl-warm-{uuid.uuid4().hex[:6]}-", lead)
    due = dispatch(args.deadlines, f"dl-{uuid.uuid4().hex[:6]}-", lead)
    time.sleep(lead + 0.2)
    fire_all(warm)  # statement caches, connections, the publisher
    counter.reset()
    backends = _backend_pids()
    redis_trips.reset()
    backend_before = sum(_backend_cpu_s(p) for p in backends)
    profiler = cProfile.Profile() if args.profile else None
    cpu, wall = time.process_time(), time.perf_counter()
    if profiler:
        profiler.enable()
    outcomes = fire_all(due)
    if profiler:
        profiler.disable()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    backend = sum(_backend_cpu_s(p) for p in backends) - backend_before
    counts: Counts = counter.reset()
    trips = redis_trips.reset()
    n = args.deadlines
    fired = sum(1 for o in outcomes if o == "fired")
    print(f"{fired}/{n} fired ({ {o: outcomes.count(o) for o in set(outcomes)} })")
    print(f"per fired deadline: {cpu / n * 1000:.2f} ms CPU in this process, "
          f"{backend / n * 1000:.2f} ms CPU in its PostgreSQL backend"
          f"{'' if backends else ' (not local: not measured)'}, {wall / n * 1000:.2f} ms wall; "
          f"{counts.per(n)}; Redis {trips / n:.1f} round trips")
    print(f"statements by kind: {dict(sorted(counts.kinds.items()))}")
    if profiler:
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats("cumulative").print_stats(args.top)
        stats.sort_stats("tottime").print_stats(25)
        print(out.getvalue())


if __name__ == "__main__":
    main()
