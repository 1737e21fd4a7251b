"""Timer lateness: when a deadline's exit reaches the flow engine, minus the deadline; beside
bare Celery ETA tasks, measured in the same run with the same broker, pool and settings.

    .venv/bin/python -m bench.timer_lateness [--deadlines 2000] [--window 30] [--load-rate 20]
                                             [--dispatch-rate 50] [--concurrency 4] [--quick]

Five phases, one after the other, each with freshly started workers:

* bare / idle  — a bare Celery worker (bench/bare_app.py; started with ``-E``, task events on,
  as celeryconfig.py has them for hitl_workers) gets ``--deadlines`` ``bare.sleep_until`` tasks
  with ``eta`` spread evenly over ``--window`` seconds; each, when it runs, publishes one
  message to a flow-engine queue. Lateness = that message's arrival at the listener (wall clock)
  − the ``eta``.
* hitl / idle  — a hitl_workers worker and beat (the reconciler) get as many steps whose
  deadlines (half step ``timeout``, half popup ``auto_action_timeout``) fall at the same offsets;
  no agent claims. Lateness = the exit message's arrival at the flow-engine listener
  (``hitl_workers.ops.flow_engine.ExitListener``, wall clock) − the deadline the worker stored
  (``timers.due_at`` of the timer that fired, which is ``executions.dispatched_at`` + the
  duration). The requests are sent at ``--dispatch-rate`` a second, each with the duration
  that puts its deadline on its place in the window, all before the window opens: dispatch
  time is not counted, and the deadlines really are spread over the window (the run prints
  their actual spread).
* bare / load and hitl / load — the same, while the machine carries one and the same load:
  a stream of ``--load-rate`` claimed steps per second (a request, an agent claiming it the
  moment its notification arrives, the exit) through a hitl_workers system. In hitl / load that
  stream shares the measured worker with the deadlines (one worker on every queue, as
  ``hitl-workers run`` starts it); in bare / load it runs on a hitl_workers worker beside the
  bare one, so bare ETA tasks meet the same CPU and database contention but keep their pool.
* hitl, timer worker / load — hitl / load as deploy/ runs it, which is bare / load's shape:
  the timer queues (``hitl.timers``, ``hitl.outbox``) on a worker of their own with
  ``--concurrency`` processes, the load on another; the deadlines no longer queue behind the
  load's requests and claims in one pool.

Each phase also prints the CPU the run's own processes used during its window (workers,
database, Redis, listener: per deadline, in the idle phases, it is what one deadline costs) and
what every other process on the machine used meanwhile.

Each run starts a PostgreSQL server and a redis-server of its own (default settings, temporary
storage), so nothing else on the machine restarts, flushes or fills them meanwhile;
``--shared-postgres`` / ``--shared-redis`` use HITL_BENCH_DATABASE_URL / HITL_BENCH_REDIS
(with HITL_BENCH_REDIS_DB_BASE) instead.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import common

ROOT = Path(__file__).resolve().parent.parent
LOGS = ROOT / "run" / "bench-logs"
HOST = socket.gethostname()
TIMER_TAG, TIMER_AGENT = "team:timers", "timer-agent"  # notified, never claims
LOAD_TAG, LOAD_AGENT = "team:load", "load-agent"  # claims every load step at once


@dataclass
class Phase:
    system: str
    loaded: bool
    timer_worker: bool = False
    """hitl: the timer queues on a worker of their own, as deploy/ runs them."""
    lateness: list[float] = field(default_factory=list)
    """Seconds late, in deadline order."""
    notes: list[str] = field(default_factory=list)
    load_before: str = ""
    load_after: str = ""
    window: tuple[float, float] = (0.0, 0.0)
    """From the first deadline to the last arrival (wall clock)."""

    @property
    def name(self) -> str:
        own = ", timer worker" if self.timer_worker else ""
        return f"{self.system}{own} / {'load' if self.loaded else 'idle'}"


# --- processes ----------------------------------------------------------------------------

@contextlib.contextmanager
def bare_worker(concurrency: int) -> Iterator[Any]:
    from bench.bare_app import app as bare
    from hitl_workers.ops.processes import Proc, wait_for_workers

    node = f"bare-timers@{HOST}"
    cmd = [sys.executable, "-m", "celery", "-A", "bench.bare_app", "worker", "-Q", "bare",
           "-n", node, "-c", str(concurrency), "--loglevel", "WARNING",
           "--without-mingle", "--without-gossip", "-E"]  # -E: task events, as hitl runs
    proc = Proc("timers-bare-worker", cmd, log_dir=LOGS, cwd=ROOT,
                env={"PYTHONPATH": str(ROOT)}).start()
    try:
        wait_for_workers(bare, [node], procs=[proc])
        for _ in range(20):  # warm the pool up, as the hitl phase's agent set-up does
            bare.send_task("bare.noop").get(timeout=10)
        yield bare
    finally:
        proc.stop()


TIMER_QUEUES = ("hitl.timers", "hitl.outbox")
"""What deploy/'s timer workers consume (deploy/compose.yaml, deploy/k8s/22-worker-timers.yaml)."""


@contextlib.contextmanager
def hitl_system(concurrency: int, *, timer_worker: bool = False) -> Iterator[Any]:
    """A worker on every queue and beat, as ``hitl-workers run`` starts them; with
    ``timer_worker``, as deploy/ runs them instead: the timer queues on a worker of their own
    (``concurrency`` processes, as many as the bare ETA tasks get), the rest on another."""
    from hitl_workers.app import app
    from hitl_workers.ops.processes import (
        ALL_QUEUES,
        Proc,
        beat_cmd,
        wait_for_workers,
        worker_cmd,
    )

    node = f"timers@{HOST}"
    schedule = LOGS / f"timers-beat-{uuid.uuid4().hex[:6]}"
    nodes, procs = [node], []
    if timer_worker:
        rest = [q for q in ALL_QUEUES if q not in TIMER_QUEUES]
        procs.append(Proc("timers-hitl-worker", worker_cmd(
            node, TIMER_QUEUES, concurrency=concurrency, loglevel="WARNING"), log_dir=LOGS))
        nodes.append(f"load@{HOST}")
        procs.append(Proc("load-hitl-worker", worker_cmd(
            nodes[-1], rest, concurrency=concurrency, loglevel="WARNING"), log_dir=LOGS))
    else:
        procs.append(Proc("timers-hitl-worker", worker_cmd(
            node, concurrency=concurrency, loglevel="WARNING"), log_dir=LOGS))
    for proc in procs:
        proc.start()
    beat = Proc("timers-hitl-beat", beat_cmd(schedule, loglevel="WARNING"), log_dir=LOGS).start()
    try:
        wait_for_workers(app, nodes, procs=[*procs, beat])
        for agent_id, tag in ((TIMER_AGENT, TIMER_TAG), (LOAD_AGENT, LOAD_TAG)):
            app.send_task("hitl.upsert_agent", kwargs={
                "agent_id": agent_id, "status": "available", "rule_groups": [[tag]]}
            ).get(timeout=10)
        yield app
    finally:
        beat.stop()
        for proc in procs:
            proc.stop()
        for leftover in LOGS.glob(f"{schedule.name}*"):
            leftover.unlink()


# --- load ---------------------------------------------------------------------------------

class Paced(threading.Thread):
    """Calls ``send`` ``rate`` times a second until stopped."""

    def __init__(self, rate: float, send: Any) -> None:
        super().__init__(daemon=True)
        self.rate, self.send = rate, send
        self.stop_event = threading.Event()
        self.sent = 0

    def run(self) -> None:
        interval, next_at = 1.0 / self.rate, time.monotonic()
        while not self.stop_event.is_set():
            self.send(self.sent)
            self.sent += 1
            next_at += interval
            self.stop_event.wait(max(0.0, next_at - time.monotonic()))


@contextlib.contextmanager
def hitl_load(app: Any, rate: float) -> Iterator[Any]:
    """``rate`` claimed steps a second; yields the listener that receives their exits."""
    listener = common.wall_clock_listener(os.environ["HITL_BROKER_URL"],
                                          f"flow-load-{uuid.uuid4().hex[:6]}").start()
    claimer = common.Claimer(app, LOAD_AGENT)
    claimer.start()
    time.sleep(0.3)  # the claimer's XREAD is in place

    def send(i: int) -> None:
        execution_id = f"load-{uuid.uuid4().hex}"
        app.send_task("hitl.request_assistance", kwargs={
            "execution_id": execution_id, "conversation_id": f"conv-{execution_id}",
            "conversation": {"tags": [LOAD_TAG]},
            "settings": {"browser_notification": True, "timeout": "5m",
                         "popup": {"text": "**Load** step",
                                   "timer": {"auto_action_timeout": "2m"}}},
            "reply_to": listener.reply_to})

    sender = Paced(rate, send)
    sender.start()
    try:
        yield listener
    finally:
        sender.stop_event.set()
        sender.join()
        listener.wait_count(sender.sent, timeout=30)
        claimer.stop_event.set()
        claimer.join()
        listener.stop()


def exits_per_s(listener: Any, start: float, end: float) -> float:
    arrived = [t for t in listener.arrived_at.values() if start <= t <= end]
    return len(arrived) / max(end - start, 1e-9)


# --- phases -------------------------------------------------------------------------------

def offsets(args: argparse.Namespace) -> list[float]:
    """Deadlines, in seconds from the phase's start: evenly over the window, after the lead."""
    return [args.lead + args.window * (i + 0.5) / args.deadlines for i in range(args.deadlines)]


@contextlib.contextmanager
def listening(prefix: str) -> Iterator[Any]:
    """A flow engine's listener on a fresh queue of the broker, noting wall-clock arrivals."""
    listener = common.wall_clock_listener(os.environ["HITL_BROKER_URL"],
                                          f"{prefix}-{uuid.uuid4().hex[:6]}").start()
    try:
        yield listener
    finally:
        listener.stop()


def run_bare(args: argparse.Namespace, loaded: bool) -> Phase:
    phase = Phase("bare", loaded, load_before=common.loadavg())
    due: dict[str, float] = {}
    with contextlib.ExitStack() as stack:
        load_listener = None
        if loaded:  # the same claimed-step stream as hitl / load, on a hitl system beside
            load_listener = stack.enter_context(
                hitl_load(stack.enter_context(hitl_system(args.concurrency)), args.load_rate))
        bare = stack.enter_context(bare_worker(args.concurrency))
        listener = stack.enter_context(listening("flow-bare"))
        if loaded:
            time.sleep(2)  # into the steady state
        start = time.time()
        for i, offset in enumerate(offsets(args)):
            execution_id = f"bare-{i}-{uuid.uuid4().hex[:8]}"
            due[execution_id] = start + offset
            bare.send_task("bare.sleep_until", kwargs={
                "execution_id": execution_id, "reply_task": listener.task,
                "reply_queue": listener.queue_name},
                eta=datetime.fromtimestamp(start + offset, UTC))
        got = listener.wait_count(len(due), timeout=args.lead + args.window + 60)
        if load_listener is not None:
            rate = exits_per_s(load_listener, start + args.lead, time.time())
            phase.notes.append(f"load: {rate:.1f} claimed steps/s delivered during the window")
    phase.lateness = [listener.arrived_at[e] - due[e]
                      for e in sorted(due, key=due.__getitem__) if e in listener.arrived_at]
    phase.window = (min(due.values()), max(listener.arrived_at.values(), default=time.time()))
    duplicates = sum(1 for e in due if listener.count_for(e) > 1)
    phase.notes.append(f"{got}/{len(due)} arrived, {duplicates} more than once")
    phase.load_after = common.loadavg()
    return phase


def send_steps(app: Any, args: argparse.Namespace, prefix: str, reply_to: dict[str, str]
               ) -> tuple[float, list[str]]:
    """Requests whose deadlines fall at :func:`offsets` from the returned start; odd ones by
    the popup's countdown (exit ``timer_action``), even ones by the step timeout (exit
    ``timeout``). Paced at ``--dispatch-rate`` so that the worker dispatches each at once: a
    duration counts from dispatch, so a backlog of requests would push the deadlines later."""
    start, ids = time.time(), []
    for i, offset in enumerate(offsets(args)):
        pause = start + i / args.dispatch_rate - time.time()
        if pause > 0:
            time.sleep(pause)
        execution_id = f"{prefix}{i}"
        ids.append(execution_id)
        duration_s = round(start + offset - time.time(), 3)
        step: dict[str, Any] = {"timeout": duration_s}
        if i % 2:
            step = {"timeout": duration_s + 60, "popup": {
                "text": "**Timer** step", "timer": {"auto_action_timeout": duration_s}}}
        app.send_task("hitl.request_assistance", kwargs={
            "execution_id": execution_id, "conversation_id": f"conv-{execution_id}",
            "conversation": {"tags": [TIMER_TAG]}, "settings": step, "reply_to": reply_to})
    return start, ids


def run_hitl(args: argparse.Namespace, loaded: bool, timer_worker: bool = False) -> Phase:
    import sqlalchemy as sa

    from hitl_workers.store.tables import executions, timers

    phase = Phase("hitl", loaded, timer_worker, load_before=common.loadavg())
    engine = sa.create_engine(common.BENCH_DB, pool_pre_ping=True)
    prefix = f"tl-{'load' if loaded else 'idle'}-{uuid.uuid4().hex[:6]}-"
    mine = executions.c.execution_id.startswith(prefix)

    def all_dispatched() -> bool:
        with engine.connect() as conn:
            count = conn.execute(sa.select(sa.func.count()).select_from(executions).where(mine))
            return count.scalar_one() == args.deadlines

    with contextlib.ExitStack() as stack:
        app = stack.enter_context(hitl_system(args.concurrency, timer_worker=timer_worker))
        load_listener = stack.enter_context(hitl_load(app, args.load_rate)) if loaded else None
        listener = stack.enter_context(listening("flow-timers"))
        if loaded:
            time.sleep(2)  # into the steady state
        start, ids = send_steps(app, args, prefix, listener.reply_to)
        first_deadline = start + args.lead
        common.wait_until(all_dispatched, timeout=args.lead + args.window, interval=0.2)
        margin = first_deadline - time.time()
        phase.notes.append(
            f"all {len(ids)} steps dispatched {margin:.1f} s before the first deadline"
            if margin > 0 else
            f"dispatch ran {-margin:.1f} s past the first deadline: raise --lead")
        got = listener.wait_count(len(ids), timeout=args.lead + args.window + 60)
        if load_listener is not None:
            rate = exits_per_s(load_listener, first_deadline, time.time())
            phase.notes.append(f"load: {rate:.1f} claimed steps/s delivered during the window")
    with engine.connect() as conn:
        fired = conn.execute(
            sa.select(timers.c.execution_id, timers.c.due_at, timers.c.fired_at)
            .where(timers.c.execution_id.startswith(prefix), timers.c.state == "fired")
            .order_by(timers.c.due_at)).all()
    engine.dispose()
    # timers.due_at is executions.dispatched_at + the duration: the deadline itself.
    phase.lateness = [listener.arrived_at[r.execution_id] - r.due_at.timestamp()
                      for r in fired if r.execution_id in listener.arrived_at]
    if fired:
        spread = (fired[-1].due_at - fired[0].due_at).total_seconds()
        shift = fired[0].due_at.timestamp() - first_deadline
        phase.notes.append(f"deadlines spread over {spread:.1f} s (aimed at {args.window:g}), "
                           f"the first {shift * 1000:.0f} ms after its aim")
        phase.window = (fired[0].due_at.timestamp(),
                        max(listener.arrived_at.values(), default=time.time()))
    in_worker = [(r.fired_at - r.due_at).total_seconds() for r in fired]
    exits = Counter(listener.exits[e][0]["exit"] for e in ids if listener.exits.get(e))
    duplicates = sum(1 for e in ids if listener.count_for(e) > 1)
    phase.notes.append(f"{got}/{len(ids)} exits arrived ({dict(exits)}), {duplicates} more "
                       f"than once, {len(ids) - len(fired)} without a fired timer")
    phase.notes.append(f"fired in the worker (timers.fired_at − due_at): "
                       f"{common.summary_ms(in_worker)}")
    phase.notes.append(f"fired more than 1 s late (by the reconciler, not the wake-up): "
                       f"{sum(1 for x in in_worker if x > 1)}")
    phase.load_after = common.loadavg()
    return phase


# --- main ---------------------------------------------------------------------------------

def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deadlines", type=int, default=None, help="default 2000 (quick 200)")
    parser.add_argument("--window", type=float, default=None,
                        help="seconds the deadlines spread over; default 30 (quick 5)")
    parser.add_argument("--lead", type=float, default=None,
                        help="seconds from a phase's start to its first deadline; default "
                             "deadlines/dispatch-rate + 5, so every step is dispatched first")
    parser.add_argument("--load-rate", type=float, default=None,
                        help="claimed steps per second in the load phases; default 20 (quick 10)")
    parser.add_argument("--dispatch-rate", type=float, default=50.0,
                        help="requests per second while a hitl phase sends its steps; below "
                             "what the worker dispatches, so no backlog delays a deadline")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--redis-port", type=int, default=None,
                        help="port for the private redis-server the run starts (default: a "
                             "free one)")
    parser.add_argument("--shared-redis", action="store_true",
                        help="no private redis-server: use HITL_BENCH_REDIS and "
                             "HITL_BENCH_REDIS_DB_BASE")
    parser.add_argument("--shared-postgres", action="store_true",
                        help="no private PostgreSQL server: use --database")
    parser.add_argument("--database", default=os.environ.get("HITL_BENCH_DATABASE_URL"),
                        help="with --shared-postgres: default HITL_BENCH_DATABASE_URL, else "
                             "database hitl_bench_timers beside HITL_BENCH_DATABASE_URL's default")
    parser.add_argument("--keep-database", action="store_true")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run for CI: 200 deadlines over 5 s, idle phases only")
    args = parser.parse_args()
    args.deadlines = args.deadlines or (200 if args.quick else 2000)
    args.window = args.window or (5.0 if args.quick else 30.0)
    args.load_rate = args.load_rate or (10.0 if args.quick else 20.0)
    if args.lead is None:
        args.lead = args.deadlines / args.dispatch_rate + 5
    return args


def main() -> None:
    args = parse_args()
    with contextlib.ExitStack() as stack:
        redis_server = postgres = None
        if not args.shared_redis:
            redis_server = common.RedisServer(args.redis_port, LOGS, "timers-redis").start()
            stack.callback(redis_server.stop)
        if not args.shared_postgres:
            postgres = common.PostgresServer(None, LOGS, "timers-postgres").start()
            stack.callback(postgres.stop)
        database = (postgres.url("hitl_bench_timers") if postgres else
                    args.database or common.database_named(common.BENCH_DB, "_timers"))
        common.configure(database=database, redis=redis_server.url if redis_server else None,
                         base=0 if redis_server else None)
        common.fresh_database()
        if not args.keep_database:
            stack.callback(common.drop_database, common.BENCH_DB)
        common.flush_redis()
        report(args, redis_server, postgres)


def trend(lateness: list[float]) -> str:
    """p50 of the first and the last fifth of the deadlines: lateness that grows across the
    window means the deadlines come faster than the worker fires them."""
    fifth = max(len(lateness) // 5, 1)
    first, last = lateness[:fifth], lateness[-fifth:]
    return (f"p50 of the first fifth of the deadlines {common.percentile(first, 50) * 1000:.1f} "
            f"ms, of the last fifth {common.percentile(last, 50) * 1000:.1f} ms")


def report(args: argparse.Namespace, server: Any, postgres: Any) -> None:
    command = " ".join(["python -m bench.timer_lateness", *sys.argv[1:]])
    print(f"machine: {common.describe_machine()}")
    print(f"command: {command}")
    print(f"broker: Redis {common.REDIS}/{common.BASE}"
          f"{' (a private redis-server)' if server else ''}; database: PostgreSQL"
          f"{' (a private server, default settings)' if postgres else ''}; pool: "
          f"prefork × {args.concurrency}, the same for bare and hitl")
    print(f"deadlines: {args.deadlines} over {args.window:g} s, the first {args.lead:g} s after "
          f"each phase starts; load phases: {args.load_rate:g} claimed steps/s through a "
          f"hitl_workers system (its worker is the measured one in hitl / load)")
    print(f"load average before: {common.loadavg()}")
    pg_started_at = common.postgres_started_at()
    meter = common.CpuMeter().start()
    plan = [("bare", False), ("hitl", False)]
    if not args.quick:
        plan += [("bare", True), ("hitl", True), ("hitl, timer worker", True)]
    phases = []
    for system, loaded in plan:
        phase = (run_bare(args, loaded) if system == "bare" else
                 run_hitl(args, loaded, timer_worker=system != "hitl"))
        phases.append(phase)
        print(f"\n{phase.name:12} lateness {common.summary_ms(phase.lateness)}")
        print(f"{'':14}{trend(phase.lateness)}")
        for note in phase.notes:
            print(f"{'':14}{note}")
        ours, others = meter.between(*phase.window)
        span_s = phase.window[1] - phase.window[0]
        per_deadline = ("" if phase.loaded else
                        f" ({ours * span_s / args.deadlines * 1000:.1f} ms per deadline)")
        print(f"{'':14}CPU during the window: this run's processes {ours:.2f} cores"
              f"{per_deadline}; other processes {others:.2f} cores (busiest 2 s: "
              f"{meter.peak_others(*phase.window):.2f}) of {os.cpu_count()}")
        print(f"{'':14}load average {phase.load_before} → {phase.load_after}")
    print("\nlateness = exit (or bare message) arrival at the flow-engine listener − deadline")
    by_name = {p.name: p for p in phases}
    for mode, system in (("idle", "hitl"), ("load", "hitl"), ("load", "hitl, timer worker")):
        bare, hitl = by_name.get(f"bare / {mode}"), by_name.get(f"{system} / {mode}")
        if not bare or not hitl or not bare.lateness or not hitl.lateness:
            continue
        p99 = (common.percentile(hitl.lateness, 99), common.percentile(bare.lateness, 99))
        p50 = (common.percentile(hitl.lateness, 50), common.percentile(bare.lateness, 50))
        label = mode if system == "hitl" else f"{mode}, timer worker of its own"
        print(f"ratio {label}: p99 {p99[0] / p99[1]:.2f}× bare ETA ({p99[0] * 1000:.1f} vs "
              f"{p99[1] * 1000:.1f} ms; aim ≤ 3×), p50 {p50[0] / p50[1]:.2f}× "
              f"({p50[0] * 1000:.1f} vs {p50[1] * 1000:.1f} ms)")
    meter.stop()
    print(common.restart_note(pg_started_at))
    print(f"load average after: {common.loadavg()}")


if __name__ == "__main__":
    main()
