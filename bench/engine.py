"""What a step costs, in one run: the figures of issue 8 beside bare Celery.

    .venv/bin/python -m bench.engine [--steps 2000] [--samples 200] [--concurrency 4]
                                     [--dispatches 200] [--quick]

Prints, on one machine, with a database and Redis databases of its own:

1. bare Celery no-op tasks per second and whole-machine CPU per task (``/proc/stat``: every
   process, PostgreSQL and Redis included), and its round trip (send → result);
   Beside it, like for like, the same no-op on a bare worker with task events on (``-E``, as
   hitl_workers' workers run for Flower): not the issue's figure, printed with its own ratios;
2. hitl_workers claimed steps per second (a flow engine sends requests, an agent claims each on
   its notification, the exit arrives) and whole-machine CPU per claimed step; both ratios;
3. PostgreSQL round trips and statements per claimed step, counted (:mod:`bench.cost`);
4. dispatch p50 (``hitl.request_assistance`` run in this process, publishing included) with 100
   and with 10,000 agents in the directory, each request eligible for 20 of them, and with a
   fan-out of 1,000 eligible agents;
5. claim → exit p50/p99 beside bare Celery's round trip.

Whole-machine CPU counts whatever else runs on the machine: the run prints the load average
before and after. The counted figures (3.) do not depend on load.
"""

from __future__ import annotations

import argparse
import time
import uuid
from pathlib import Path

from bench.common import (
    configure,
    describe_machine,
    flush_redis,
    fresh_database,
    loadavg,
    percentile,
)

configure()


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy since boot (``/proc/stat``, every core)."""
    import os

    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class OwnCpu:
    """CPU seconds used by this run's own processes: this process and its children (the
    workers, with the claimer and exit listener as threads here), the PostgreSQL backends
    connected to the benchmark's database and the Redis server on the benchmark's port.
    Unlike ``/proc/stat`` it does not count other people's processes on a shared machine,
    so its ratio is the one that survives their load (it still feels it: a process that
    waits for a core keeps its caches cold). Call it to read a cumulative figure."""

    def __init__(self) -> None:
        import os

        self._hz = os.sysconf("SC_CLK_TCK")
        self._last: dict[int, int] = {}
        self._kind: dict[int, str] = {}

    def __call__(self) -> float:
        import os

        table: dict[int, tuple[int, int]] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                    table[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
                except (OSError, IndexError, ValueError):
                    continue
        redis_pid, backends = self._servers()
        ours = {redis_pid, *backends}
        for pid in table:
            walk, hops = pid, 0
            while walk in table and hops < 64:
                if walk == os.getpid():
                    ours.add(pid)
                    break
                walk, hops = table[walk][0], hops + 1
        for pid in ours & table.keys():
            self._last[pid] = table[pid][1]  # a process that ended keeps its last figure
            self._kind.setdefault(pid, "this process" if pid == os.getpid() else
                                  "Redis" if pid == redis_pid else
                                  "PostgreSQL" if pid in backends else
                                  "worker main" if table[pid][0] == os.getpid() else
                                  "worker pool")
        return sum(self._last.values()) / self._hz

    def by_kind(self) -> dict[str, float]:
        """Cumulative CPU seconds by kind of process (as of the last call)."""
        kinds: dict[str, float] = {}
        for pid, ticks in self._last.items():
            kinds[self._kind[pid]] = kinds.get(self._kind[pid], 0.0) + ticks / self._hz
        return kinds

    @staticmethod
    def _servers() -> tuple[int, list[int]]:
        import redis
        import sqlalchemy as sa

        from bench import common

        redis_pid = int(redis.Redis.from_url(common.REDIS).info("server")["process_id"])
        database = sa.engine.make_url(common.BENCH_DB).database
        engine = sa.create_engine(common.BENCH_DB.replace(f"/{database}", "/postgres"),
                                  poolclass=sa.pool.NullPool)
        with engine.connect() as conn:
            backends = [row[0] for row in conn.execute(sa.text(
                "SELECT pid FROM pg_stat_activity WHERE datname = :d"), {"d": database})]
        engine.dispose()
        return redis_pid, backends


def dispatch_p50(directory: int, eligible: int, samples: int) -> tuple[float, float]:
    """p50 and p99 (seconds) of one dispatch with ``directory`` agents, ``eligible`` of whom can
    see the conversation (the others see other teams' conversations)."""
    from hitl_workers.clock import utcnow
    from hitl_workers.services import agents as directory_service
    from hitl_workers.store.db import transaction
    from hitl_workers.tasks import requests

    team = f"team:d{uuid.uuid4().hex[:6]}"
    with transaction() as conn:
        for i in range(directory):
            groups = [[team]] if i < eligible else [[f"team:other-{i % 50}"], ["lang:xx", team]]
            directory_service.upsert_agent(conn, directory_service.UpsertAgentIn(
                agent_id=f"{team}-agent-{i:05d}", status="available", rule_groups=groups),
                utcnow())
    with transaction() as conn:
        # A directory in use has planner statistics (autovacuum analyzes it); the shared
        # test server runs with autovacuum off, so take them here.
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("ANALYZE")
    reply = {"task": "flow.exit", "queue": f"flow-engine-{uuid.uuid4().hex[:6]}"}
    times = []
    for n in range(samples + 5):
        execution_id = f"disp-{uuid.uuid4().hex}"
        t0 = time.perf_counter()
        answer = requests.request_assistance.run(
            execution_id=execution_id, conversation_id=f"conv-{execution_id}",
            conversation={"tags": [team, "lang:en"], "contact": {"name": "Ann"}},
            settings={"timeout": "5m", "popup": {"text": "**Dispatch**",
                                                 "timer": {"auto_action_timeout": "2m"}}},
            reply_to=reply)
        elapsed = time.perf_counter() - t0
        if answer["state"] != "waiting":
            raise SystemExit(f"dispatch answered {answer}")
        if n >= 5:  # warm-up
            times.append(elapsed)
    with transaction() as conn:  # leave the directory as it was
        conn.exec_driver_sql("DELETE FROM agents WHERE agent_id LIKE %(p)s"
                             if conn.dialect.name == "postgresql" else
                             "DELETE FROM agents WHERE agent_id LIKE :p", {"p": f"{team}-%"})
    return percentile(times, 50), percentile(times, 99)


def main() -> None:
    from bench import claimed_throughput as throughput
    from bench.cost import run_steps

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--dispatches", type=int, default=200)
    parser.add_argument("--quick", action="store_true",
                        help="400 steps, 50 samples, 50 dispatches (a smoke run)")
    parser.add_argument("--fan-out-only", action="store_true",
                        help="only the dispatch with a fan-out of 1,000 (--dispatches samples): "
                        "the figure to watch while changing the notification fan-out")
    parser.add_argument("--throughput-only", action="store_true",
                        help="only bare Celery's and the claimed steps' throughput and "
                        "whole-machine CPU, with their ratios (the figures to watch while "
                        "cutting CPU per step)")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.samples, args.dispatches = 400, 50, 50

    fresh_database()
    flush_redis()
    print(f"machine: {describe_machine()}; load average {loadavg()}")
    if args.fan_out_only:
        fan = dispatch_p50(1_000, 1_000, args.dispatches)
        print(f"command: python -m bench.engine --fan-out-only --dispatches {args.dispatches}")
        print(f"dispatch p50, fan-out to 1,000 agents:       {fan[0] * 1000:6.1f} ms "
              f"(p99 {fan[1] * 1000:.1f}; aim ≤ 40 ms)")
        print(f"load average after: {loadavg()}")
        return
    print(f"command: python -m bench.engine --steps {args.steps} --samples {args.samples} "
          f"--concurrency {args.concurrency} --dispatches {args.dispatches}")

    own = OwnCpu()
    readings: list[tuple[float, float]] = []

    def both() -> float:
        # Read at the start and the end of each throughput window: the whole machine (the
        # issue's figure) and this run's own processes.
        readings.append((machine_busy_s(), own()))
        kinds.append(own.by_kind())
        return readings[-1][0]

    def own_ms(per: int) -> float:
        (_, start), (_, end) = readings[-2:]
        (before, after) = kinds[-2:]
        own_split.append(", ".join(f"{k} {(after[k] - before.get(k, 0.0)) / per * 1000:.2f}"
                               for k in sorted(after)))
        readings.clear()
        return (end - start) / per * 1000

    kinds: list[dict[str, float]] = []
    own_split: list[str] = []

    bare_tps, bare_rtt, bare_window = throughput.measure_bare(
        args.concurrency, args.steps * 2, args.samples, cpu=both)
    bare_cpu_ms, bare_own_ms = bare_window / (args.steps * 2) * 1000, own_ms(args.steps * 2)
    # Like for like: the same no-op with task events on, as hitl_workers' workers send them
    # for Flower. Not the figure (its bare worker sends none); printed beside it.
    bare_e_tps, _rtt, bare_e_window = throughput.measure_bare(
        args.concurrency, args.steps * 2, 0, cpu=both, events=True)
    bare_e_cpu_ms, bare_e_own_ms = (bare_e_window / (args.steps * 2) * 1000,
                                    own_ms(args.steps * 2))
    hitl_sps, claim_lat, dups, hitl_window = throughput.measure_hitl(
        args.concurrency, args.steps, args.samples, cpu=both)
    hitl_cpu_ms, hitl_own_ms = hitl_window / args.steps * 1000, own_ms(args.steps)
    events_line = (f"like for like, bare with task events (-E, as hitl_workers runs): "
                   f"{bare_e_tps:.1f} tasks/s, {bare_e_cpu_ms:.2f} ms CPU per task; ratios "
                   f"{hitl_sps / bare_e_tps:.2f}× throughput, {hitl_cpu_ms / bare_e_cpu_ms:.2f}× "
                   f"CPU ({hitl_own_ms / bare_e_own_ms:.2f}× own processes)")
    own_line = (f"ratio CPU, this run's own processes: {hitl_own_ms / bare_own_ms:.2f}× "
                f"({hitl_own_ms:.2f} ms per step, {bare_own_ms:.2f} ms per bare task: the "
                f"workers, this process, the Redis server, the database's backends)\n"
                f"  by process, ms per bare task: {own_split[0]}\n"
                f"  by process, ms per bare task with -E: {own_split[1]}\n"
                f"  by process, ms per claimed step: {own_split[2]}")
    if args.throughput_only:
        print(f"  (--throughput-only) bare Celery no-op: {bare_tps:8.1f} tasks/s, "
              f"{bare_cpu_ms:5.2f} ms CPU per task (whole machine)")
        print(f"  hitl claimed steps: {hitl_sps:8.1f} steps/s, {hitl_cpu_ms:5.2f} ms CPU per "
              f"step (whole machine), {dups} duplicate exits")
        print(f"ratio throughput:      {hitl_sps / bare_tps:.2f}× bare (aim ≥ 0.25×)")
        print(f"ratio CPU:             {hitl_cpu_ms / bare_cpu_ms:.2f}× a bare task (aim ≤ 4×)")
        print(own_line)
        print(events_line)
        print(f"load average after: {loadavg()}")
        return

    counts, _cpu = run_steps(200)
    split = counts.split  # type: ignore[attr-defined]

    d100 = dispatch_p50(100, 20, args.dispatches)
    d10k = dispatch_p50(10_000, 20, args.dispatches)
    fan = dispatch_p50(1_000, 1_000, max(20, args.dispatches // 4))

    print(f"bare Celery no-op:     {bare_tps:8.1f} tasks/s, {bare_cpu_ms:5.2f} ms CPU per task "
          f"(whole machine)")
    print(f"hitl claimed steps:    {hitl_sps:8.1f} steps/s, {hitl_cpu_ms:5.2f} ms CPU per step "
          f"(whole machine), {dups} duplicate exits")
    print(f"ratio throughput:      {hitl_sps / bare_tps:.2f}× bare (aim ≥ 0.25×, ceiling 0.5×)")
    print(f"ratio CPU:             {hitl_cpu_ms / bare_cpu_ms:.2f}× a bare task (aim ≤ 4×)")
    print(own_line)
    print(events_line)
    print(f"PostgreSQL per claimed step: {counts.per(200)}")
    for name, part in split.items():
        print(f"  {name:9} {part.per(200)}")
    print(f"dispatch p50, eligible 20 of 100 agents:     {d100[0] * 1000:6.1f} ms "
          f"(p99 {d100[1] * 1000:.1f})")
    print(f"dispatch p50, eligible 20 of 10,000 agents:  {d10k[0] * 1000:6.1f} ms "
          f"(p99 {d10k[1] * 1000:.1f}); {d10k[0] / d100[0]:.2f}× the 100 (aim ≤ 1.5×)")
    print(f"dispatch p50, fan-out to 1,000 agents:       {fan[0] * 1000:6.1f} ms "
          f"(p99 {fan[1] * 1000:.1f}; aim ≤ 40 ms)")
    print(f"claim → exit:          p50 {percentile(claim_lat, 50) * 1000:.1f} ms, "
          f"p99 {percentile(claim_lat, 99) * 1000:.1f} ms; bare round trip p50 "
          f"{percentile(bare_rtt, 50) * 1000:.1f} ms, p99 {percentile(bare_rtt, 99) * 1000:.1f}"
          " ms")
    print(f"load average after: {loadavg()}")


if __name__ == "__main__":
    main()
