"""Claimed steps per second, request to exit delivered, beside bare Celery in the same run.

    .venv/bin/python -m bench.claimed_throughput [--steps 2000] [--samples 200] [--concurrency 4]

Measures, on one machine, with a database and Redis databases of its own:
1. bare Celery: no-op tasks per second (all sent, then all results awaited), and the round
   trip of one task (send → result) one at a time;
2. hitl_workers: claimed steps per second — a flow engine sends requests, an agent claims each
   one as soon as its notification arrives on its stream, the flow engine receives the exit —
   and the latency from sending a claim to the exit message arriving, one step at a time.
A claimed step needs at least two tasks (dispatch, claim), so 0.5× bare throughput is the
ceiling.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from bench.common import (
    BASE,
    REDIS,
    Claimer,
    configure,
    describe_machine,
    flush_redis,
    fresh_database,
    ms,
    percentile,
)

configure()

from hitl_workers.ops.flow_engine import ExitListener  # noqa: E402
from hitl_workers.ops.processes import Proc, wait_for_workers, worker_cmd  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
LOGS = ROOT / "run" / "bench-logs"
HOST = socket.gethostname()


def bare_worker(concurrency: int, events: bool = False) -> Proc:
    """``events``: with ``-E``, task events on, as celeryconfig.py runs hitl_workers' workers
    (for Flower); the issue's bare figure has them off."""
    cmd = [sys.executable, "-m", "celery", "-A", "bench.bare_app", "worker", "-Q", "bare",
           "-n", f"bare@{HOST}", "-c", str(concurrency), "--loglevel", "WARNING",
           "--without-mingle", "--without-gossip", *(["-E"] if events else [])]
    return Proc("bare-worker", cmd, log_dir=LOGS, cwd=ROOT,
                env={"PYTHONPATH": str(ROOT)}).start()


def measure_bare(concurrency: int, tasks: int, samples: int, cpu: Any = None,
                 events: bool = False) -> Any:
    """Tasks per second and round trips; with ``cpu`` (a function returning busy CPU
    seconds) also the CPU spent during the throughput window; ``events``: see
    :func:`bare_worker`."""
    from bench.bare_app import app as bare

    proc = bare_worker(concurrency, events)
    try:
        wait_for_workers(bare, [f"bare@{HOST}"], procs=[proc])
        for _ in range(50):  # warm up the pool
            bare.send_task("bare.noop").get(timeout=10)
        started, busy = time.perf_counter(), cpu() if cpu else 0.0
        results = [bare.send_task("bare.noop", kwargs={"i": i}) for i in range(tasks)]
        for result in results:
            result.get(timeout=120)
        throughput = tasks / (time.perf_counter() - started)
        busy = cpu() - busy if cpu else 0.0
        round_trips = []
        for _ in range(samples):
            t0 = time.perf_counter()
            bare.send_task("bare.noop").get(timeout=10)
            round_trips.append(time.perf_counter() - t0)
        if cpu:
            return throughput, round_trips, busy
        return throughput, round_trips
    finally:
        proc.stop()


def request(app, listener: ExitListener, tag: str) -> str:  # type: ignore[no-untyped-def]
    execution_id = f"bench-{uuid.uuid4().hex}"
    app.send_task("hitl.request_assistance", kwargs={
        "execution_id": execution_id, "conversation_id": f"conv-{execution_id}",
        "conversation": {"tags": [tag]},
        "settings": {"browser_notification": True, "timeout": "5m",
                     "popup": {"text": "**Bench** step", "timer": {"auto_action_timeout": "2m"}}},
        "reply_to": listener.reply_to})
    return execution_id


def measure_hitl(concurrency: int, steps: int, samples: int, cpu: Any = None) -> Any:
    """Claimed steps per second, claim → exit latencies and duplicate exits; with ``cpu``
    also the CPU spent during the throughput window."""
    from hitl_workers.app import app

    node = f"bench@{HOST}"
    proc = Proc("hitl-worker", worker_cmd(node, concurrency=concurrency, loglevel="WARNING"),
                log_dir=LOGS).start()
    listener = ExitListener(os.environ["HITL_BROKER_URL"], f"flow-bench-{uuid.uuid4().hex[:6]}")
    try:
        wait_for_workers(app, [node], procs=[proc])
        listener.start()
        tag, agent_id = "team:bench", "bench-agent"
        app.send_task("hitl.upsert_agent", kwargs={
            "agent_id": agent_id, "status": "available", "rule_groups": [[tag]]}).get(timeout=10)
        claimer = Claimer(app, agent_id)
        claimer.start()
        time.sleep(0.5)  # the claimer's XREAD is in place
        for _ in range(20):  # warm up
            request(app, listener, tag)
        listener.wait_count(20, timeout=60)

        started, busy = time.perf_counter(), cpu() if cpu else 0.0
        ids = [request(app, listener, tag) for _ in range(steps)]
        got = listener.wait_count(20 + steps, timeout=600) - 20
        throughput = got / (time.perf_counter() - started)
        busy = cpu() - busy if cpu else 0.0
        claimer.stop_event.set()
        claimer.join()

        duplicates = sum(1 for e in ids if listener.count_for(e) != 1)
        wrong = sum(1 for e in ids if listener.exits[e] and listener.exits[e][0]["exit"]
                    != "claimed")
        if got != steps or wrong:
            raise SystemExit(f"only {got}/{steps} exits ({wrong} not claimed)")

        latencies = []
        for _ in range(samples):
            execution_id = f"lat-{uuid.uuid4().hex}"
            # Only the claim is timed: the request's own result says the step is waiting.
            app.send_task("hitl.request_assistance", kwargs={
                "execution_id": execution_id, "conversation_id": f"conv-{execution_id}",
                "conversation": {"tags": [tag]}, "reply_to": listener.reply_to,
            }).get(timeout=30)
            t0 = time.monotonic()
            app.send_task("hitl.claim", kwargs={"execution_id": execution_id,
                                                "agent_id": agent_id})
            listener.wait_for(execution_id, timeout=30)
            latencies.append(listener.received_at[execution_id] - t0)
        if cpu:
            return throughput, latencies, duplicates, busy
        return throughput, latencies, duplicates
    finally:
        listener.stop()
        proc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()

    fresh_database()
    flush_redis()
    print(f"machine: {describe_machine()}")
    print(f"command: python -m bench.claimed_throughput --steps {args.steps} "
          f"--samples {args.samples} --concurrency {args.concurrency}")
    print(f"broker: Redis ({REDIS}/{BASE}), database: PostgreSQL, pool: prefork × "
          f"{args.concurrency}")

    bare_tps, bare_rtt = measure_bare(args.concurrency, args.steps * 2, args.samples)
    print(f"bare Celery no-op:   {bare_tps:8.1f} tasks/s; round trip {ms(bare_rtt)}")
    hitl_sps, claim_lat, dups = measure_hitl(args.concurrency, args.steps, args.samples)
    print(f"hitl claimed steps:  {hitl_sps:8.1f} steps/s (request → exit delivered), "
          f"{dups} duplicate exits")
    print(f"claim → exit:        {ms(claim_lat)}")
    print(f"ratio throughput:    {hitl_sps / bare_tps:.2f}× bare (ceiling 0.50×, aim ≥ 0.40×)")
    p99_ratio = percentile(claim_lat, 99) / percentile(bare_rtt, 99)
    p50_ratio = percentile(claim_lat, 50) / percentile(bare_rtt, 50)
    print(f"ratio latency:       p50 {p50_ratio:.2f}×, p99 {p99_ratio:.2f}× bare round trip "
          f"(aim p99 ≤ 3×)")


if __name__ == "__main__":
    main()
