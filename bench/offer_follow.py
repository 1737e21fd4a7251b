"""Offers that follow eligibility (docs/contract.md §9): from a change to the notification.

    .venv/bin/python -m bench.offer_follow [--samples 200] [--steps 20] [--concurrency 4]

One hitl_workers worker; ``--steps`` routed steps (``priority`` given) wait for a team. One
agent of the team goes offline and comes back ``--samples`` times, one change at a time:
each ``hitl.set_agent_status`` is sent, and the time measured is from just before the send
(wall clock) to the moment the agent's Redis Stream holds the notification it causes for the
*first* waiting step (``assistance.withdrawn`` going offline, ``assistance.requested`` coming
back) — read with a blocking XREAD. Prints the median, p90, p99 and max of each direction.

Uses HITL_BENCH_DATABASE_URL (re-created and migrated) and HITL_BENCH_REDIS (databases
HITL_BENCH_REDIS_DB_BASE to +2, flushed), as the other benchmarks do.
"""

from __future__ import annotations

import argparse
import json
import socket
import time
import uuid
from pathlib import Path

from bench.common import configure, describe_machine, flush_redis, fresh_database, percentile

configure()

from hitl_workers.ops.processes import Proc, wait_for_workers, worker_cmd  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
LOGS = ROOT / "run" / "bench-logs"
HOST = socket.gethostname()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    fresh_database()
    flush_redis()

    import redis

    from hitl_workers.app import app
    from hitl_workers.notify.streams import stream_key
    from hitl_workers.settings import get_settings

    node = f"bench@{HOST}"
    proc = Proc("hitl-worker", worker_cmd(node, concurrency=args.concurrency,
                                          loglevel="WARNING"), log_dir=LOGS).start()
    streams = redis.Redis.from_url(get_settings().redis_url, decode_responses=True)
    try:
        wait_for_workers(app, [node], procs=[proc])
        tag, agent_id = f"team:bench-{uuid.uuid4().hex[:6]}", "bench-follower"
        app.send_task("hitl.upsert_agent", kwargs={
            "agent_id": agent_id, "status": "available", "rule_groups": [[tag]]}).get(timeout=10)
        first = None
        for i in range(args.steps):
            eid = f"bench-follow-{uuid.uuid4().hex[:10]}"
            first = first or eid
            app.send_task("hitl.request_assistance", kwargs={
                "execution_id": eid, "conversation_id": f"conv-{eid}",
                "conversation": {"tags": [tag]},
                "settings": {"priority": i % 10, "timeout": "1h"}}).get(timeout=10)
        key = stream_key(agent_id)
        last = "$"
        gone: list[float] = []
        back: list[float] = []
        for sample in range(args.samples):
            status = "offline" if sample % 2 == 0 else "available"
            wanted = "assistance.withdrawn" if status == "offline" else "assistance.requested"
            last = streams.xrevrange(key, count=1)[0][0] if streams.exists(key) else "0"
            started = time.time()
            app.send_task("hitl.set_agent_status", kwargs={"agent_id": agent_id,
                                                           "status": status})
            arrived = None
            while arrived is None:
                found = streams.xread({key: last}, block=5000, count=100)
                if not found:
                    raise SystemExit(f"no {wanted} within 5 s (sample {sample})")
                for entry_id, fields in found[0][1]:
                    last = entry_id
                    event = json.loads(fields["event"])
                    if event["type"] == wanted:
                        arrived = time.time()
                        break
            (gone if status == "offline" else back).append((arrived - started) * 1000)
            # Let the rest of the change's notifications (the other steps) arrive.
            time.sleep(0.05 + args.steps * 0.002)
        print(describe_machine())
        for name, values in (("withdrawn (going offline)", gone),
                             ("requested (coming back)", back)):
            print(f"{name}: n={len(values)} median {percentile(values, 50):.1f} ms, "
                  f"p90 {percentile(values, 90):.1f} ms, p99 {percentile(values, 99):.1f} ms, "
                  f"max {max(values):.1f} ms")
    finally:
        proc.stop()


if __name__ == "__main__":
    main()
