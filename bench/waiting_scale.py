"""Many waiting steps: worker memory, database size and claim latency while 100,000 steps
wait on their deadlines; beside a bare Celery worker holding as many ETA tasks.

    .venv/bin/python -m bench.waiting_scale [--steps 100000] [--claims 200] [--concurrency 4]
                                            [--quick]

1. bare Celery (bench/bare_app.py, the same broker, pool and settings, task events on as for
   hitl_workers): a worker is sent ``--steps`` ``bare.sleep_until`` tasks with ``eta`` an hour
   away, the way a system that kept its deadlines as ETA tasks would hold them; its memory
   before and after.
2. hitl_workers: two systems side by side, each with its own database, Redis databases,
   worker and beat — *full* and *empty*. ``--steps`` requests go through the real
   ``hitl.request_assistance`` path into *full*; each step waits with a popup countdown of 1 h
   and a step timeout of 2 h, so two timer rows each and nothing fires. Then: the workers'
   memory, both databases' size, and claim latency — send ``hitl.claim`` for a fresh waiting
   step, until its exit reaches the flow-engine listener — on *full* and on *empty*,
   alternating one claim each so that whatever else the machine does falls on both alike.
   Before loading, the same alternation with both systems empty shows what the two differ by
   when nothing waits.

Memory is summed over the worker's process group (the main process and its pool children),
from /proc: RSS (VmRSS, which counts pages a child shares with its parent once per process)
and PSS (shared pages divided among their sharers).

Each run starts a PostgreSQL server and a redis-server of its own (default settings, temporary
storage, removed at the end); ``--shared-postgres`` / ``--shared-redis`` use
HITL_BENCH_DATABASE_URL / HITL_BENCH_REDIS (with HITL_BENCH_REDIS_DB_BASE) instead.
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
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench import common

ROOT = Path(__file__).resolve().parent.parent
LOGS = ROOT / "run" / "bench-logs"
HOST = socket.gethostname()
WAIT_TAG, WAIT_AGENT = "team:waiting", "waiting-agent"  # offered every waiting step
CLAIM_TAG, CLAIM_AGENT = "team:claims", "claim-agent"  # claims the sampled steps
STEP_SETTINGS = {"browser_notification": True, "timeout": "2h",
                 "popup": {"text": "**Waiting** step", "timer": {"auto_action_timeout": "1h"}}}
BACKLOG = 2000  # requests sent ahead of the worker while loading


def mib(kb: int) -> str:
    return f"{kb / 1024:.1f} MiB"


# --- bare Celery holding ETA tasks --------------------------------------------------------

def measure_bare(args: argparse.Namespace) -> tuple[common.Memory, common.Memory, float]:
    """Memory of an idle bare worker, then of the same worker holding ``--steps`` ETA tasks."""
    import redis

    from bench.bare_app import app as bare
    from hitl_workers.ops.processes import Proc, wait_for_workers

    node = f"bare-waiting@{HOST}"
    cmd = [sys.executable, "-m", "celery", "-A", "bench.bare_app", "worker", "-Q", "bare",
           "-n", node, "-c", str(args.concurrency), "--loglevel", "WARNING",
           "--without-mingle", "--without-gossip", "-E"]  # -E: task events, as hitl runs
    proc = Proc("waiting-bare-worker", cmd, log_dir=LOGS, cwd=ROOT,
                env={"PYTHONPATH": str(ROOT)}).start()
    broker = redis.Redis.from_url(os.environ["HITL_BROKER_URL"])
    try:
        wait_for_workers(bare, [node], procs=[proc])
        for _ in range(20):
            bare.send_task("bare.noop").get(timeout=10)
        assert proc.popen is not None
        idle = common.group_memory(proc.popen.pid)
        eta = datetime.now(UTC) + timedelta(hours=1)
        started = time.monotonic()
        for i in range(args.steps):
            # A payload like a hitl wake-up's: an execution id and the timer's kind.
            bare.send_task("bare.sleep_until", eta=eta, kwargs={
                "execution_id": f"bench-{uuid.uuid4().hex}", "kind": "timeout"})
            if (i + 1) % 20000 == 0:
                print(f"  bare: {i + 1} ETA tasks sent")

        def held() -> int:
            # Redis keeps a delivered, unacked message in the ``unacked`` hash until the
            # worker acks it: an ETA task the worker holds, waiting for its eta.
            return int(broker.hlen("unacked")) if broker.llen("bare") == 0 else 0

        next_report = time.monotonic() + 10
        while held() < args.steps:
            if not proc.alive:
                raise RuntimeError(f"bare worker died:\n{proc.tail()}")
            if time.monotonic() > next_report:
                print(f"  bare: worker holds {broker.hlen('unacked')} ETA tasks, "
                      f"{broker.llen('bare')} still queued")
                next_report += 10
            time.sleep(0.5)
        elapsed = time.monotonic() - started
        time.sleep(2)  # let the worker settle
        holding = common.group_memory(proc.popen.pid)
        return idle, holding, elapsed
    finally:
        proc.kill()  # the held tasks are thrown away with the broker database below
        broker.flushdb()


# --- two hitl_workers systems -------------------------------------------------------------

@dataclass
class System:
    name: str
    env: dict[str, str]
    app: Any = None
    procs: list[Any] = field(default_factory=list)
    listener: Any = None

    @property
    def worker_pid(self) -> int:
        return int(self.procs[0].popen.pid)

    def memory(self) -> common.Memory:
        return common.group_memory(self.worker_pid)


@contextlib.contextmanager
def hitl_system(name: str, database: str, base: int, concurrency: int) -> Iterator[System]:
    """A worker on every queue and beat (as ``hitl-workers run`` starts them), a client app
    and a flow-engine listener, all on ``database`` and Redis databases ``base``…``base+2``."""
    from celery import Celery

    from hitl_workers.ops.flow_engine import ExitListener
    from hitl_workers.ops.processes import Proc, beat_cmd, wait_for_workers, worker_cmd

    env = common.system_env(database, common.REDIS, base)
    system = System(name, env)
    app = Celery(f"bench-{name}")
    app.config_from_object("celeryconfig")
    app.conf.update(broker_url=env["HITL_BROKER_URL"],
                    result_backend=env["HITL_RESULT_BACKEND_URL"])
    system.app = app
    node = f"waiting-{name}@{HOST}"
    schedule = LOGS / f"waiting-{name}-beat-{uuid.uuid4().hex[:6]}"
    system.procs = [
        Proc(f"waiting-{name}-worker", worker_cmd(node, concurrency=concurrency,
                                                  loglevel="WARNING"), env=env, log_dir=LOGS),
        Proc(f"waiting-{name}-beat", beat_cmd(schedule, loglevel="WARNING"), env=env,
             log_dir=LOGS),
    ]
    for proc in system.procs:
        proc.start()
    system.listener = ExitListener(env["HITL_BROKER_URL"], f"flow-{name}-{uuid.uuid4().hex[:6]}")
    try:
        wait_for_workers(app, [node], procs=system.procs)
        system.listener.start()
        for agent_id, tag in ((WAIT_AGENT, WAIT_TAG), (CLAIM_AGENT, CLAIM_TAG)):
            app.send_task("hitl.upsert_agent", kwargs={
                "agent_id": agent_id, "status": "available", "rule_groups": [[tag]]}
            ).get(timeout=10)
        yield system
    finally:
        system.listener.stop()
        for proc in reversed(system.procs):
            proc.stop()
        for leftover in LOGS.glob(f"{schedule.name}*"):
            leftover.unlink()


def claim_latency(system: System) -> float:
    """One fresh step, waiting (the request's own result says so); then the claim, timed
    from sending it to its exit's arrival at the flow-engine listener."""
    execution_id = f"claim-{uuid.uuid4().hex}"
    system.app.send_task("hitl.request_assistance", kwargs={
        "execution_id": execution_id, "conversation_id": f"conv-{execution_id}",
        "conversation": {"tags": [CLAIM_TAG]}, "settings": STEP_SETTINGS,
        "reply_to": system.listener.reply_to}).get(timeout=60)
    t0 = time.monotonic()
    system.app.send_task("hitl.claim", kwargs={"execution_id": execution_id,
                                              "agent_id": CLAIM_AGENT})
    exit_message = system.listener.wait_for(execution_id, timeout=60)
    if exit_message["exit"] != "claimed":
        raise RuntimeError(f"{execution_id} exited {exit_message['exit']}, not claimed")
    return system.listener.received_at[execution_id] - t0


def alternate_claims(systems: list[System], samples: int) -> dict[str, list[float]]:
    """``samples`` claims on each system, one each in turn (the lead alternates)."""
    for system in systems:  # warm up
        for _ in range(10):
            claim_latency(system)
    latencies: dict[str, list[float]] = {s.name: [] for s in systems}
    for k in range(samples):
        for system in systems if k % 2 == 0 else list(reversed(systems)):
            latencies[system.name].append(claim_latency(system))
    return latencies


def load_steps(system: System, database: str, steps: int) -> float:
    """Send ``steps`` requests through ``hitl.request_assistance``, keeping about ``BACKLOG``
    ahead of the worker; returns how long until all were waiting. Prints progress."""
    import sqlalchemy as sa

    engine = sa.create_engine(database)
    sent = 0
    waiting_query = sa.text("SELECT count(*) FROM executions WHERE state = 'waiting' "
                            "AND execution_id LIKE 'wait-%'")

    def waiting() -> int:
        try:
            with engine.connect() as conn:
                return int(conn.execute(waiting_query).scalar_one())
        except sa.exc.OperationalError as exc:  # PostgreSQL restarted under us: carry on
            print(f"  loading: database unreachable ({str(exc).splitlines()[0]}); retrying")
            time.sleep(1)
            return last_count[0]

    stop = threading.Event()
    last_count = [0]  # steps waiting at the last look, for the sender's back-pressure

    def send() -> None:
        nonlocal sent
        while sent < steps and not stop.is_set():
            execution_id = f"wait-{sent}-{uuid.uuid4().hex[:8]}"
            system.app.send_task("hitl.request_assistance", kwargs={
                "execution_id": execution_id, "conversation_id": f"conv-{execution_id}",
                "conversation": {"tags": [WAIT_TAG]}, "settings": STEP_SETTINGS,
                "reply_to": system.listener.reply_to})
            sent += 1
            while sent - last_count[0] > BACKLOG and not stop.is_set():
                time.sleep(0.05)

    sender = threading.Thread(target=send, daemon=True)
    started = last_report = time.monotonic()
    sender.start()
    try:
        while True:
            last_count[0] = waiting()
            if last_count[0] >= steps:
                break
            now = time.monotonic()
            if now - last_report >= 15:
                rate = last_count[0] / (now - started)
                eta_s = (steps - last_count[0]) / rate if rate else float("nan")
                print(f"  loading: {last_count[0]:7d}/{steps} waiting ({rate:.0f}/s, "
                      f"~{eta_s:.0f} s to go; load average {common.loadavg()})", flush=True)
                last_report = now
            if not all(p.alive for p in system.procs):
                raise RuntimeError(f"a process of {system.name} died:\n"
                                   + "\n".join(p.tail() for p in system.procs))
            time.sleep(0.5)
    finally:
        stop.set()
        sender.join()
        engine.dispose()
    return time.monotonic() - started


def held_wakeups(broker_url: str) -> int:
    """``hitl.fire_timer`` messages delivered to a worker and not yet acked: the ETA wake-ups
    it holds (the Redis transport keeps each in its ``unacked`` hash until the ack)."""
    import json

    import redis

    client = redis.Redis.from_url(broker_url)
    held = 0
    for _tag, raw in client.hscan_iter("unacked"):
        message = json.loads(raw)[0]
        held += message.get("headers", {}).get("task") == "hitl.fire_timer"
    return held


def database_report(database: str) -> tuple[int, list[tuple[str, int]], dict[str, int]]:
    """(database bytes, [(table, bytes with indexes)], facts about the timers)."""
    import sqlalchemy as sa

    engine = sa.create_engine(database)
    with engine.connect() as conn:
        size = int(conn.execute(sa.text("SELECT pg_database_size(current_database())"))
                   .scalar_one())
        tables = [(r[0], int(r[1])) for r in conn.execute(sa.text(
            "SELECT relname, pg_total_relation_size(relid) FROM pg_stat_user_tables "
            "ORDER BY 2 DESC"))]
        facts = dict(conn.execute(sa.text(
            "SELECT 'pending', count(*) FROM timers WHERE state = 'pending' UNION ALL "
            "SELECT 'armed', count(*) FROM timers WHERE state = 'pending' "
            "AND armed_at IS NOT NULL UNION ALL "
            "SELECT 'waiting', count(*) FROM executions WHERE state = 'waiting'")).all())
    engine.dispose()
    return size, tables, {k: int(v) for k, v in facts.items()}


# --- main ---------------------------------------------------------------------------------

def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=None, help="default 100000 (quick 1000)")
    parser.add_argument("--claims", type=int, default=None,
                        help="claims timed on each system; default 200 (quick 20)")
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
                             "database hitl_bench_waiting beside HITL_BENCH_DATABASE_URL's default")
    parser.add_argument("--keep-database", action="store_true")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run for CI: 1,000 waiting steps, 20 claims, no control")
    args = parser.parse_args()
    args.steps = args.steps or (1000 if args.quick else 100_000)
    args.claims = args.claims or (20 if args.quick else 200)
    return args


def main() -> None:
    args = parse_args()
    with contextlib.ExitStack() as stack:
        redis_server = postgres = None
        if not args.shared_redis:
            redis_server = common.RedisServer(args.redis_port, LOGS, "waiting-redis").start()
            stack.callback(redis_server.stop)
        if not args.shared_postgres:
            postgres = common.PostgresServer(None, LOGS, "waiting-postgres").start()
            stack.callback(postgres.stop)
        database = (postgres.url("hitl_bench_waiting") if postgres else
                    args.database or common.database_named(common.BENCH_DB, "_waiting"))
        common.configure(database=database, redis=redis_server.url if redis_server else None,
                         base=0 if redis_server else None)
        empty_db = common.database_named(common.BENCH_DB, "_empty")
        for db in (common.BENCH_DB, empty_db):
            common.fresh_database(db)
            if not args.keep_database:
                stack.callback(common.drop_database, db)
        common.flush_redis(6)
        report(args, redis_server, postgres, empty_db)


def cpu_note(meter: common.CpuMeter, started: float) -> str:
    ours, others = meter.between(started, time.time())
    return (f"CPU meanwhile: this run's processes {ours:.2f} cores, other processes "
            f"{others:.2f} (busiest 2 s: {meter.peak_others(started, time.time()):.2f}) of "
            f"{os.cpu_count()}")


def report(args: argparse.Namespace, server: Any, postgres: Any, empty_db: str) -> None:
    from hitl_workers.settings import get_settings

    horizon_s = get_settings().timer_horizon_s
    pg_started_at = common.postgres_started_at()
    meter = common.CpuMeter().start()
    print(f"machine: {common.describe_machine()}")
    print(f"command: {' '.join(['python -m bench.waiting_scale', *sys.argv[1:]])}")
    print(f"broker: Redis {common.REDIS}{' (a private redis-server)' if server else ''}; "
          f"database: PostgreSQL{' (a private server, default settings)' if postgres else ''};"
          f" pool: prefork × {args.concurrency} for every worker")
    print(f"load average before: {common.loadavg()}", flush=True)

    print(f"\nbare Celery holding {args.steps} ETA tasks (eta = now + 1 h):", flush=True)
    bare_idle, bare_holding, bare_s = measure_bare(args)
    print(f"  idle worker:            {bare_idle}")
    print(f"  holding {args.steps} ETA:   {bare_holding}  (received in {bare_s:.0f} s; "
          f"{(bare_holding.rss_kb - bare_idle.rss_kb) / args.steps:.2f} KB RSS per held task)")

    with contextlib.ExitStack() as stack:
        full = stack.enter_context(hitl_system("full", common.BENCH_DB, common.BASE,
                                               args.concurrency))
        empty = stack.enter_context(hitl_system("empty", empty_db, common.BASE + 3,
                                                args.concurrency))
        print(f"\nhitl_workers: full and empty systems up; load average {common.loadavg()}")
        before = full.memory()
        print(f"  full worker, nothing waiting:  {before}")
        control = None
        if not args.quick:
            started = time.time()
            control = alternate_claims([full, empty], args.claims)
            print("  claim → exit, both systems empty (control):")
            for name, values in control.items():
                print(f"    {name:6} {common.ms(values)}")
            print(f"  {cpu_note(meter, started)}")

        print(f"\n  loading {args.steps} waiting steps into full (popup countdown 1 h, "
              f"timeout 2 h; load average {common.loadavg()})", flush=True)
        started = time.time()
        load_s = load_steps(full, common.BENCH_DB, args.steps)
        print(f"  {args.steps} steps waiting after {load_s:.0f} s "
              f"({args.steps / load_s:.0f} requests/s); {cpu_note(meter, started)}")
        time.sleep(5)  # let the workers settle
        size, tables, facts = database_report(common.BENCH_DB)
        empty_size, _, _ = database_report(empty_db)
        held = held_wakeups(full.env["HITL_BROKER_URL"])
        full_memory, empty_memory = full.memory(), empty.memory()
        print(f"  timers: {facts['pending']} pending, {facts['armed']} armed; ETA wake-ups "
              f"held by the broker/worker: {held}. The deadlines are hours away, beyond "
              f"HITL_TIMER_HORIZON_S = {horizon_s:g} s, so none is an ETA task: they wait "
              "as rows, and the reconciler arms each as it enters the horizon. That is the "
              "design working.")
        print(f"  full worker, {facts['waiting']} waiting:  {full_memory}")
        print(f"  empty worker:                  {empty_memory}")
        print(f"  database: full {mib(size // 1024)} ({size / max(facts['waiting'], 1):.0f} "
              f"bytes per waiting step), empty {mib(empty_size // 1024)}")
        print("  largest tables (with indexes): " + ", ".join(
            f"{name} {mib(nbytes // 1024)}" for name, nbytes in tables[:6]))

        print(f"\n  claim → exit while {facts['waiting']} steps wait (full) and nothing "
              f"waits (empty), {args.claims} each, alternating:", flush=True)
        started = time.time()
        latencies = alternate_claims([full, empty], args.claims)
        for name, values in latencies.items():
            print(f"    {name:6} {common.ms(values)}")
        print(f"  {cpu_note(meter, started)}")
        after_claims = full.memory()
        print(f"  full worker after the claims:  {after_claims}")

    print("\nsummary")
    for label, ours, theirs in (("RSS", full_memory.rss_kb, bare_holding.rss_kb),
                                ("PSS", full_memory.pss_kb, bare_holding.pss_kb)):
        print(f"  worker memory ({label}): {mib(ours)} with {args.steps} waiting vs "
              f"{mib(theirs)} for bare Celery holding as many ETA tasks: "
              f"{ours / theirs:.3f}× (aim < 0.25×)")
    print(f"  growth with the steps waiting: hitl {mib(full_memory.rss_kb - before.rss_kb)} "
          f"RSS, bare {mib(bare_holding.rss_kb - bare_idle.rss_kb)} RSS")
    p99 = (common.percentile(latencies["full"], 99), common.percentile(latencies["empty"], 99))
    p50 = (common.percentile(latencies["full"], 50), common.percentile(latencies["empty"], 50))
    print(f"  claim p99 {p99[0] * 1000:.1f} ms waiting vs {p99[1] * 1000:.1f} ms empty: "
          f"{p99[0] / p99[1]:.2f}× (aim ≤ 1.5×); p50 {p50[0] / p50[1]:.2f}×")
    if control:
        c99 = (common.percentile(control["full"], 99), common.percentile(control["empty"], 99))
        print(f"  control, both empty: p99 {c99[0] / c99[1]:.2f}× (what the two systems "
              "differ by with nothing waiting)")
    meter.stop()
    print(common.restart_note(pg_started_at))
    print(f"load average after: {common.loadavg()}")


if __name__ == "__main__":
    main()
