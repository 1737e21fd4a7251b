"""Many agents' event streams on one gateway process: Redis connections, memory, and the
delay from XADD to the SSE frame while they are all connected (docs/gateway.md, "Scale").

    ulimit -n 20000          # each stream is one socket in the gateway and one here
    python -m bench.gateway_streams --streams 5000 --events 3000 --rate 200

It starts a private ``redis-server`` (so every Redis client it counts is the gateway's), a
``hitl-workers gateway`` process, and opens ``--streams`` event streams, one per agent
(agents ``bench-gw-N``, inserted into the database's directory first and deleted after), each
a raw asyncio socket. Then it XADDs ``--events`` notifications at ``--rate`` a second to
random agents' streams, each carrying the time it was written, and every stream reports when
its frame arrived. Nothing runs but Redis and the gateway: no worker is needed for SSE.

The database is ``HITL_BENCH_DATABASE_URL`` (or ``--database``); it is migrated, not dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import secrets
import subprocess
import sys
import time
from pathlib import Path

from bench import common

PREFIX = "bench-gw-"


def raise_fd_limit() -> int:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def insert_agents(database: str, count: int) -> None:
    import sqlalchemy as sa

    from hitl_workers.clock import utcnow
    from hitl_workers.store.tables import agents

    engine = sa.create_engine(database)
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(agents.delete().where(agents.c.agent_id.like(f"{PREFIX}%")))
        conn.execute(agents.insert(), [
            {"agent_id": f"{PREFIX}{n}", "name": f"Bench {n}", "status": "available",
             "rule_groups": [], "updated_at": now} for n in range(count)])
    engine.dispose()


def delete_agents(database: str) -> None:
    import sqlalchemy as sa

    from hitl_workers.store.tables import agents

    engine = sa.create_engine(database)
    with engine.begin() as conn:
        conn.execute(agents.delete().where(agents.c.agent_id.like(f"{PREFIX}%")))
    engine.dispose()


def cpu_s(pid: int) -> float:
    """User plus system CPU seconds the process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Stream:
    """One agent's event stream over a raw socket; records each frame's delay."""

    def __init__(self, agent_id: str, token: str, port: int, delays: list[float],
                 seen: dict[str, int]) -> None:
        self.agent_id, self.token, self.port = agent_id, token, port
        self.delays, self.seen = delays, seen
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> asyncio.Task[None]:
        reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.write((f"GET /agents/{self.agent_id}/events?token={self.token} HTTP/1.1\r\n"
                           f"Host: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n").encode())
        status = await reader.readline()
        if b" 200 " not in status:
            raise RuntimeError(f"{self.agent_id}: {status!r}")
        while (await reader.readline()) not in (b"\r\n", b""):
            pass  # headers
        while (await reader.readline()).strip() not in (b"", b"0"):
            pass  # the chunk with the ": connected" frame, up to its blank line
        return asyncio.get_running_loop().create_task(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        async for line in reader:
            if line.startswith(b"data: "):
                arrived = time.time()
                event = json.loads(line[6:])
                self.delays.append(arrived - event["sent_at"])
                self.seen[event["id"]] = self.seen.get(event["id"], 0) + 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def open_all(streams: list[Stream], parallel: int) -> list[asyncio.Task[None]]:
    gate = asyncio.Semaphore(parallel)

    async def one(stream: Stream) -> asyncio.Task[None]:
        async with gate:
            return await stream.open()

    return list(await asyncio.gather(*(one(s) for s in streams)))


async def measure(args: argparse.Namespace, port: int, gateway_pid: int, redis_url: str,
                  secret: str) -> dict[str, object]:
    import redis.asyncio as aioredis

    from hitl_workers.gateway.tokens import make_token
    from hitl_workers.notify.streams import stream_key
    from hitl_workers.settings import Settings

    settings = Settings(secret=secret)
    notify = aioredis.Redis.from_url(redis_url, decode_responses=True)
    delays: list[float] = []
    seen: dict[str, int] = {}
    agents = [f"{PREFIX}{n}" for n in range(args.streams)]
    streams = [Stream(a, make_token(a, settings), port, delays, seen) for a in agents]
    idle_rss = rss_mib(gateway_pid)
    started = time.monotonic()
    tasks = await open_all(streams, args.parallel)
    connect_s = time.monotonic() - started
    await asyncio.sleep(3)  # let the readers settle
    clients = [c for c in await notify.client_list()
               if c["id"] != str(await notify.client_id())]
    connected_rss = rss_mib(gateway_pid)

    # XADD at the rate, to random agents, each entry stamped with its write time.
    cpu_before, events_started = cpu_s(gateway_pid), time.monotonic()
    interval = 1 / args.rate
    next_at = time.monotonic()
    written: list[str] = []
    for n in range(args.events):
        agent = random.choice(agents)
        event_id = f"bench-{n}"
        await notify.xadd(stream_key(agent), {"event": json.dumps(
            {"type": "bench", "id": event_id, "sent_at": time.time()})})
        written.append(event_id)
        next_at += interval
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    deadline = time.monotonic() + 15
    while len(seen) < len(written) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    busy_rss = rss_mib(gateway_pid)
    cpu_share = (cpu_s(gateway_pid) - cpu_before) / (time.monotonic() - events_started)
    for stream in streams:
        stream.close()
    for task in tasks:
        task.cancel()
    await notify.aclose()
    delays_ms = [d * 1000 for d in delays]
    return {
        "streams": args.streams,
        "connect_s": round(connect_s, 1),
        "gateway_redis_connections": len(clients),
        "gateway_rss_mib": {"before": round(idle_rss, 1), "connected": round(connected_rss, 1),
                            "after_events": round(busy_rss, 1)},
        "rss_kib_per_stream": round((connected_rss - idle_rss) * 1024 / args.streams, 1),
        "events": {"written": len(written), "received": len(seen),
                   "twice": sum(1 for c in seen.values() if c > 1), "rate_per_s": args.rate},
        "gateway_cpu_share_during_events": round(cpu_share, 2),
        "xadd_to_frame_ms_second_half": {
            "p50": round(common.percentile(delays_ms[len(delays_ms) // 2:], 50), 2),
            "p99": round(common.percentile(delays_ms[len(delays_ms) // 2:], 99), 2)},
        "xadd_to_frame_ms": {"p50": round(common.percentile(delays_ms, 50), 2),
                             "p99": round(common.percentile(delays_ms, 99), 2),
                             "max": round(max(delays_ms, default=float("nan")), 2)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=5000)
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--rate", type=float, default=200.0, help="XADDs a second")
    parser.add_argument("--parallel", type=int, default=200, help="connections opening at once")
    parser.add_argument("--database", default=None, help="default HITL_BENCH_DATABASE_URL")
    parser.add_argument("--readers", type=int, default=None,
                        help="HITL_GATEWAY_STREAM_READERS (default: the setting's default)")
    parser.add_argument("--log-dir", default="bench/logs")
    args = parser.parse_args()

    fds = raise_fd_limit()
    if fds < args.streams * 2 + 200:
        sys.exit(f"the open-file limit is {fds}; raise it (ulimit -n {args.streams * 2 + 500})")
    database = args.database or common.BENCH_DB
    from hitl_workers.store.migrate import upgrade

    upgrade(database)
    insert_agents(database, args.streams)
    redis_server = common.RedisServer(None, args.log_dir, name="bench-gw-redis").start()
    port = common.free_port()
    secret = secrets.token_urlsafe(32)
    env = {**os.environ, **common.system_env(database, redis_server.url, 0),
           "HITL_SECRET": secret}
    if args.readers is not None:
        env["HITL_GATEWAY_STREAM_READERS"] = str(args.readers)
    log = (Path(args.log_dir) / "bench-gw.log").open("w")
    gateway = subprocess.Popen(
        [sys.executable, "-m", "hitl_workers.cli", "gateway", "--port", str(port),
         "--log-level", "warning"], env=env, preexec_fn=raise_fd_limit,
        stdout=subprocess.DEVNULL, stderr=log)
    try:
        import httpx

        if not common.wait_until(lambda: _ready(httpx, port), timeout=60):
            sys.exit("the gateway did not start: see bench/logs/bench-gw.log")
        result = asyncio.run(measure(args, port, gateway.pid,
                                     f"{redis_server.url}/2", secret))
        result["readers"] = args.readers or "default"
        result["machine"] = common.describe_machine()
        print(json.dumps(result, indent=2))
    finally:
        gateway.terminate()
        gateway.wait(timeout=30)
        redis_server.stop()
        delete_agents(database)
        log.close()


def _ready(httpx: object, port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200  # type: ignore[attr-defined]
    except Exception:
        return False


if __name__ == "__main__":
    main()
