"""Bytes a step leaves behind: PostgreSQL (tables with their indexes and TOAST) and the agents'
Redis streams, per ended step, for the retention arithmetic in docs/operations.md.

    python -m bench.storage_per_step [--steps 2000]

A private redis-server and a database of its own (beside HITL_BENCH_DATABASE_URL's default).
The steps are a realistic mix, each offered to three agents with a popup: a third claimed, a
third ending by their timeout, a third rejected.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
import uuid
from pathlib import Path

from bench import common

LOGS = Path("test-artifacts/bench")
HOST = os.uname().nodename
TAG = "team:storage"
AGENTS = [f"storage-agent-{i}" for i in range(3)]
POPUP = {"text": "**VIP** customer asks about a *refund* of order 12345",
         "timer": {"auto_action_timeout": "1h"},
         "additional_timers": [{"label": "In queue", "since": 1764000000}]}
CONTACT = {"id": "contact-1", "name": "Ada Lovelace", "phone": "+15550100",
           "email": "ada@example.org"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    args = parser.parse_args()
    LOGS.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        redis_server = common.RedisServer(None, LOGS, "storage-redis").start()
        stack.callback(redis_server.stop)
        database = common.database_named(common.BENCH_DB, "_storage")
        common.configure(database=database, redis=redis_server.url, base=0)
        common.fresh_database(database)
        stack.callback(common.drop_database, database)
        run(args.steps, stack)


def run(steps: int, stack: contextlib.ExitStack) -> None:
    import redis
    import sqlalchemy as sa
    from celery import Celery

    from hitl_workers.ops.flow_engine import ExitListener
    from hitl_workers.ops.processes import Proc, beat_cmd, wait_for_workers, worker_cmd

    env = common.system_env(common.BENCH_DB, common.REDIS, common.BASE)
    app = Celery("bench-storage")
    app.config_from_object("celeryconfig")
    app.conf.update(broker_url=env["HITL_BROKER_URL"],
                    result_backend=env["HITL_RESULT_BACKEND_URL"])
    node = f"storage@{HOST}"
    schedule = LOGS / f"storage-beat-{uuid.uuid4().hex[:6]}"
    procs = [Proc("storage-worker", worker_cmd(node, concurrency=4, loglevel="WARNING"),
                  env={**env, "HITL_RETENTION_DAYS": "0"}, log_dir=LOGS),
             Proc("storage-beat", beat_cmd(schedule, loglevel="WARNING"),
                  env={**env, "HITL_RETENTION_DAYS": "0"}, log_dir=LOGS)]
    for proc in procs:
        proc.start()
        stack.callback(proc.stop)
    wait_for_workers(app, [node], procs=procs)
    listener = ExitListener(env["HITL_BROKER_URL"], f"flow-storage-{uuid.uuid4().hex[:6]}")
    listener.start()
    stack.callback(listener.stop)
    for agent_id in AGENTS:
        app.send_task("hitl.upsert_agent", kwargs={
            "agent_id": agent_id, "status": "available", "rule_groups": [[TAG]]}).get(timeout=30)

    ids = [f"storage-{uuid.uuid4().hex}" for _ in range(steps)]
    results = [app.send_task("hitl.request_assistance", kwargs={
        "execution_id": execution_id, "conversation_id": f"conv-{execution_id}",
        "conversation": {"tags": [TAG], "contact": CONTACT},
        "settings": {"popup": POPUP, "timeout": "3s" if i % 3 == 1 else "1h"},
        "reply_to": listener.reply_to}) for i, execution_id in enumerate(ids)]
    for result in results:
        result.get(timeout=300)
    for i, execution_id in enumerate(ids):
        if i % 3 != 1:
            app.send_task("hitl.claim" if i % 3 == 0 else "hitl.reject", kwargs={
                "execution_id": execution_id, "agent_id": AGENTS[i % 3],
                "event_id": f"ev-{execution_id}"})
    deadline = time.monotonic() + 600
    for execution_id in ids:
        listener.wait_for(execution_id, timeout=max(1.0, deadline - time.monotonic()))
    time.sleep(2)  # the outbox marks its last rows sent

    engine = sa.create_engine(common.BENCH_DB, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql("VACUUM ANALYZE")
        sizes = conn.exec_driver_sql(
            "SELECT relname, pg_total_relation_size(relid), n_live_tup "
            "FROM pg_stat_user_tables ORDER BY 2 DESC").all()
    engine.dispose()
    client = redis.Redis.from_url(env["HITL_REDIS_URL"])
    stream_bytes = sum(int(client.memory_usage(key) or 0)
                       for key in client.scan_iter(match="hitl:agent:*"))
    entries = sum(int(client.xlen(key)) for key in client.scan_iter(match="hitl:agent:*"))

    print(f"machine: {common.describe_machine()}")
    print(f"{steps} ended steps, each offered to {len(AGENTS)} agents with a popup "
          f"(a third claimed, a third timed out, a third rejected)")
    print(f"{'table':<16} {'rows':>8} {'bytes':>12} {'bytes/step':>11}")
    total = 0
    for name, size, rows in sizes:
        if name in ("agents", "heartbeats", "alembic_version"):
            continue
        total += size
        print(f"{name:<16} {rows:>8} {size:>12} {size / steps:>11.0f}")
    print(f"{'PostgreSQL':<16} {'':>8} {total:>12} {total / steps:>11.0f}")
    print(f"{'Redis streams':<16} {entries:>8} {stream_bytes:>12} {stream_bytes / steps:>11.0f}")


if __name__ == "__main__":
    main()
