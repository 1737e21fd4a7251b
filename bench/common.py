"""Shared set-up for the benchmarks: a database, Redis databases and worker processes of
their own, so a benchmark never touches a development or test system."""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support import databases
from tests.support.ports import free_port

BENCH_DB = os.environ.get("HITL_BENCH_DATABASE_URL",
                          "postgresql+psycopg2://postgres@127.0.0.1:5432/hitl_bench")
REDIS = os.environ.get("HITL_BENCH_REDIS", "redis://127.0.0.1:6379")
BASE = int(os.environ.get("HITL_BENCH_REDIS_DB_BASE", "7"))


def system_env(database: str, redis_url: str, base: int) -> dict[str, str]:
    """The HITL_ variables of one hitl_workers system: a database and three Redis databases
    (broker ``base``, results ``base + 1``, notifications ``base + 2``)."""
    return {
        "HITL_DATABASE_URL": database,
        "HITL_BROKER_URL": f"{redis_url}/{base}",
        "HITL_RESULT_BACKEND_URL": f"{redis_url}/{base + 1}",
        "HITL_REDIS_URL": f"{redis_url}/{base + 2}",
    }


def configure(*, database: str | None = None, redis: str | None = None,
              base: int | None = None) -> None:
    """Point this process (and the workers it starts) at the benchmark's own services.

    Arguments override HITL_BENCH_DATABASE_URL / HITL_BENCH_REDIS / HITL_BENCH_REDIS_DB_BASE
    (read the module's ``BENCH_DB``, ``REDIS``, ``BASE`` after this call, not before). Call it
    before anything imports ``hitl_workers.app``: the settings are read once, at that import.
    """
    global BENCH_DB, REDIS, BASE
    BENCH_DB = database or BENCH_DB
    REDIS = redis or REDIS
    BASE = BASE if base is None else base
    os.environ.update(system_env(BENCH_DB, REDIS, BASE))


def fresh_database(database: str | None = None) -> None:
    """Drop and re-create the benchmark database (``BENCH_DB`` by default), then migrate it."""
    databases.fresh(database or BENCH_DB)


def drop_database(database: str) -> None:
    databases.drop(database, quiet=False)


def database_named(database: str, suffix: str) -> str:
    """``database`` with ``suffix`` appended to its database name (a second system's)."""
    return databases.named(database, suffix)


def flush_redis(count: int = 3) -> None:
    import redis

    for offset in range(count):
        redis.Redis.from_url(f"{REDIS}/{BASE + offset}").flushdb()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def describe_machine() -> str:
    cpu = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    pg = subprocess.run(["psql", "--version"], capture_output=True, text=True).stdout.strip()
    return (f"{platform.node()}: {os.cpu_count()} cores ({cpu}), Python "
            f"{sys.version.split()[0]}, {pg or 'psql ?'}")


def wait_until(predicate, timeout: float, interval: float = 0.05) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def ms(values: list[float]) -> str:
    return (f"p50 {percentile(values, 50) * 1000:.1f} ms, "
            f"p99 {percentile(values, 99) * 1000:.1f} ms"
            f" (n={len(values)}, mean {statistics.fmean(values) * 1000:.1f} ms)")


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages, as ``uptime`` prints them."""
    try:
        return ", ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def summary_ms(values: list[float]) -> str:
    """p50 / p99 / max of ``values`` (seconds), in milliseconds."""
    if not values:
        return "no samples"
    return (f"p50 {percentile(values, 50) * 1000:7.1f} ms, p99 {percentile(values, 99) * 1000:7.1f}"
            f" ms, max {max(values) * 1000:7.1f} ms (n={len(values)})")


class RedisServer:
    """A private ``redis-server`` (no persistence) so a benchmark has all 16 databases to
    itself, whatever else runs on the machine. Refuses a port that already answers; with no
    port, takes a free one."""

    def __init__(self, port: int | None, log_dir: str | Path, name: str = "bench-redis"
                 ) -> None:
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        self.log_dir = log_dir
        self.name = name
        self.proc: Any = None

    def _pings(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(port=self.port, socket_connect_timeout=0.5).ping())
        except redis.ConnectionError:
            return False

    def start(self) -> RedisServer:
        from hitl_workers.ops.processes import Proc

        if self._pings():
            raise SystemExit(f"something already answers on port {self.port}; choose another "
                             "--redis-port (the benchmark wants a Redis of its own)")
        self.proc = Proc(self.name, [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no"], log_dir=self.log_dir).start()
        if not wait_until(self._pings, timeout=10):
            raise RuntimeError(f"redis-server on port {self.port} did not start:\n"
                               f"{self.proc.tail()}")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


@dataclass(frozen=True)
class Memory:
    rss_kb: int
    pss_kb: int
    processes: int
    main_rss_kb: int = 0
    """The group leader's own RSS (a Celery worker's main process, which holds ETA tasks)."""

    def __str__(self) -> str:
        return (f"RSS {self.rss_kb / 1024:7.1f} MiB, PSS {self.pss_kb / 1024:7.1f} MiB "
                f"({self.processes} processes; main process RSS "
                f"{self.main_rss_kb / 1024:.1f} MiB)")


def group_memory(pgid: int) -> Memory:
    """Memory of every process in process group ``pgid`` (a worker and its pool children).

    RSS is summed from ``/proc/<pid>/status`` (VmRSS), so pages a forked child still shares
    with its parent count once per process; PSS (``smaps_rollup``) divides shared pages among
    their sharers, so its sum is what the group really occupies.
    """
    rss = pss = count = main = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[2]) != pgid:
                continue
            status = (entry / "status").read_text()
            rollup = (entry / "smaps_rollup").read_text()
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile, or not ours to read
        count += 1
        rss += _kb(status, "VmRSS:")
        pss += _kb(rollup, "Pss:")
        if int(entry.name) == pgid:
            main = _kb(status, "VmRSS:")
    return Memory(rss, pss, count, main)


def _kb(text: str, field: str) -> int:
    for line in text.splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def wall_clock_listener(broker_url: str, queue: str) -> Any:
    """An :class:`~hitl_workers.ops.flow_engine.ExitListener` that also notes each first arrival's
    wall-clock time (``arrived_at[execution_id]``, seconds since the epoch), to set against
    deadlines the workers computed from their own wall clock."""
    from hitl_workers.ops.flow_engine import ExitListener

    class WallClockListener(ExitListener):
        def __init__(self) -> None:
            super().__init__(broker_url, queue)
            self.arrived_at: dict[str, float] = {}

        def _on_message(self, body: Any, message: Any) -> None:
            now = time.time()
            _args, kwargs, _embed = body if isinstance(body, list) else ([], body, {})
            self.arrived_at.setdefault(str(kwargs.get("execution_id")), now)
            super()._on_message(body, message)

    return WallClockListener()


def postgres_started_at(database: str | None = None) -> str:
    """When the PostgreSQL server behind ``database`` (``BENCH_DB``) last started: a run
    compares it at its start and end to tell whether something restarted the server
    meanwhile (the fault tests do, on a shared machine)."""
    import sqlalchemy as sa

    engine = sa.create_engine(database or BENCH_DB)
    try:
        for attempt in range(30):
            try:
                with engine.connect() as conn:
                    return str(conn.execute(sa.text("SELECT pg_postmaster_start_time()"))
                               .scalar_one())
            except sa.exc.OperationalError:
                if attempt == 29:
                    raise
                time.sleep(1)
        raise AssertionError("unreachable")
    finally:
        engine.dispose()


def restart_note(started_at: str, database: str | None = None) -> str:
    now = postgres_started_at(database)
    if now == started_at:
        return f"PostgreSQL was not restarted during the run (up since {started_at})"
    return (f"WARNING: PostgreSQL restarted during the run (up since {now}, was {started_at}):"
            " something else on the machine restarted it; the figures are disturbed")


class PostgresServer:
    """A private PostgreSQL server (``initdb`` into a temporary directory, default settings)
    so that a benchmark owns its database server: nothing else on the machine restarts it,
    reconfigures it or fills its connection slots during a run. As root, the server runs as
    the ``postgres`` user (PostgreSQL refuses root)."""

    def __init__(self, port: int | None, log_dir: str | Path, name: str = "bench-postgres"
                 ) -> None:
        self.port = port or free_port()
        self.log_dir = Path(log_dir)
        self.name = name
        self.data: Path | None = None
        self.proc: Any = None
        self.bindir = self._bindir()

    @staticmethod
    def _bindir() -> Path:
        configured = os.environ.get("HITL_BENCH_PG_BINDIR")
        if configured:
            return Path(configured)
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                       key=lambda p: int(p.parent.parent.name) if p.parent.parent.name
                       .isdigit() else 0)
        if not found:
            raise SystemExit("no PostgreSQL server binaries found (set HITL_BENCH_PG_BINDIR, or "
                             "pass --shared-postgres to use HITL_BENCH_DATABASE_URL)")
        return found[-1].parent

    def url(self, database: str) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{database}"

    def _as_owner(self, cmd: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd

    def start(self) -> PostgresServer:
        import shutil
        import tempfile

        from hitl_workers.ops.processes import Proc

        self.data = Path(tempfile.mkdtemp(prefix="hitl-bench-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.data, "postgres", "postgres")
        subprocess.run(self._as_owner([
            str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
            "--auth=trust", "-E", "UTF8", "--no-sync"]), check=True, capture_output=True)
        self.proc = Proc(self.name, self._as_owner([
            str(self.bindir / "postgres"), "-D", str(self.data), "-p", str(self.port),
            "-k", str(self.data), "-c", "listen_addresses=127.0.0.1"]),
            log_dir=self.log_dir).start()
        if not wait_until(self._ready, timeout=30, interval=0.2):
            raise RuntimeError(f"private PostgreSQL did not start:\n{self.proc.tail()}")
        return self

    def _ready(self) -> bool:
        return subprocess.run([str(self.bindir / "pg_isready"), "-h", "127.0.0.1", "-p",
                               str(self.port)], capture_output=True).returncode == 0

    def stop(self) -> None:
        import shutil

        if self.proc is not None and self.proc.popen is not None:
            self.proc.signal_group(signal.SIGINT)  # a "fast" shutdown: clients are cut off
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.popen.wait(timeout=30)
            self.proc.stop()
        if self.data is not None:
            shutil.rmtree(self.data, ignore_errors=True)


class CpuMeter:
    """Samples, twice a second, the CPU time used by this process and its descendants (the
    benchmark's workers, servers and clients) and by every other process on the machine, so
    a run can say what its own work cost and how much of the machine others took meanwhile.
    """

    def __init__(self, interval_s: float = 0.5) -> None:
        import threading

        self.interval_s = interval_s
        self.samples: list[tuple[float, float, float]] = []  # (time, ours, others) cpu-s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-meter", daemon=True)
        self._hz = os.sysconf("SC_CLK_TCK")

    def start(self) -> CpuMeter:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _snapshot(self) -> dict[int, tuple[int, int]]:
        """pid -> (parent pid, utime + stime in clock ticks)."""
        table = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                table[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
            except (OSError, IndexError, ValueError):
                continue
        return table

    def _ours(self, table: dict[int, tuple[int, int]]) -> set[int]:
        root, ours = os.getpid(), set()
        for pid in table:
            walk, hops = pid, 0
            while walk in table and hops < 64:
                if walk == root:
                    ours.add(pid)
                    break
                walk, hops = table[walk][0], hops + 1
        return ours

    def _run(self) -> None:
        previous = self._snapshot()
        while not self._stop.wait(self.interval_s):
            current = self._snapshot()
            ours_set = self._ours(current)
            ours = others = 0
            for pid, (_parent, ticks) in current.items():
                delta = ticks - previous[pid][1] if pid in previous else 0
                if pid in ours_set:
                    ours += delta
                else:
                    others += delta
            self.samples.append((time.time(), ours / self._hz, others / self._hz))
            previous = current

    def between(self, start: float, end: float) -> tuple[float, float]:
        """Mean CPU use (cores) of ours and of others over samples taken in [start, end]."""
        inside = [s for s in self.samples if start < s[0] <= end]
        span = len(inside) * self.interval_s
        if not span:
            return float("nan"), float("nan")
        return sum(s[1] for s in inside) / span, sum(s[2] for s in inside) / span

    def peak_others(self, start: float, end: float, window_s: float = 2.0) -> float:
        """The busiest ``window_s`` of other processes in [start, end], in cores."""
        inside = [s for s in self.samples if start < s[0] <= end]
        per = max(min(int(window_s / self.interval_s), len(inside)), 1)
        sums = [sum(s[2] for s in inside[i:i + per]) / (per * self.interval_s)
                for i in range(max(len(inside) - per + 1, 0))]
        return max(sums, default=float("nan"))


class Claimer(threading.Thread):
    """An agent who claims every request the moment its notification arrives."""

    def __init__(self, app: Any, agent_id: str) -> None:
        super().__init__(daemon=True)
        import redis

        from hitl_workers.notify.streams import stream_key

        self.app, self.agent_id, self.key = app, agent_id, stream_key(agent_id)
        self.redis = redis.Redis.from_url(os.environ["HITL_REDIS_URL"], decode_responses=True)
        self.stop_event = threading.Event()
        self.claimed = 0

    def run(self) -> None:
        import json

        last = "$"
        while not self.stop_event.is_set():
            replies = self.redis.xread({self.key: last}, block=200, count=500)
            for _stream, entries in replies or []:
                for entry_id, fields in entries:
                    last = entry_id
                    event = json.loads(fields["event"])
                    if event["type"] == "assistance.requested":
                        self.app.send_task("hitl.claim", kwargs={
                            "execution_id": event["execution_id"], "agent_id": self.agent_id})
                        self.claimed += 1
