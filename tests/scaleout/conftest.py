"""Three worker hosts against one PostgreSQL and one Redis (docs/scaling.md §2, §10).

Each host is a network namespace with its own address and host name (tests/scaleout/netns.py)
when this machine allows it (root, iproute2); otherwise the three workers are plain processes
on this host, and the test says so. ``HITL_TEST_SCALEOUT_MODE=processes`` forces the fallback;
``=netns`` makes a machine that cannot do namespaces fail instead of falling back.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
from sqlalchemy.engine import make_url

from hitl_workers.ops.flow_engine import ExitListener
from hitl_workers.ops.processes import Proc
from tests.conftest import BASE, REDIS
from tests.scaleout import netns
from tests.support import databases
from tests.support.fixtures import ARTIFACTS, fresh_database
from tests.support.system import System, app_for

HOSTS = ("host-a", "host-b", "host-c")
CONCURRENCY = 3
# The broker of this system: a Redis database of its own, so the session's worker (which runs
# until the session ends) never takes these tasks.
BROKER_DB = BASE + 3
# Short enough that a killed worker's unacknowledged messages come back within the test; the
# horizon stays below it, so no armed wake-up is redelivered while it waits (docs/scaling.md §5).
VISIBILITY_TIMEOUT_S = 8.0
TIMER_HORIZON_S = 3.0


@dataclass
class ScaleOut:
    system: System
    app: Any
    broker_url: str
    database_url: str
    mode: str
    why_not_netns: str = ""
    hosts: dict[str, str] = field(default_factory=dict)  # host name -> node name
    addresses: dict[str, str] = field(default_factory=dict)  # host name -> its address
    forwarder: Proc | None = None

    def log(self, host: str) -> Path:
        return self.system.procs[self.hosts[host]].log_path

    def proc(self, host: str) -> Proc:
        return self.system.procs[self.hosts[host]]

    def forwarded_connections(self) -> dict[str, int]:
        """Per ``peer->target``, the connections the hosts opened through the forwarder."""
        if self.forwarder is None:
            return {}
        return dict(json.loads(self.forwarder_stats.read_text()))

    @property
    def forwarder_stats(self) -> Path:
        return self.system.log_dir / "tcp-forward.json"


def _with_host(url: str, host: str, port: int) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    auth = f"{netloc[0]}@" if len(netloc) == 2 else ""
    return urlunsplit(parts._replace(netloc=f"{auth}{host}:{port}"))


def _choose_mode() -> tuple[bool, str]:
    wanted = os.environ.get("HITL_TEST_SCALEOUT_MODE", "auto")
    if wanted == "processes":
        return False, "HITL_TEST_SCALEOUT_MODE=processes"
    ok, why = netns.available()
    if not ok and wanted == "netns":
        pytest.fail(f"network namespaces were asked for and are not available: {why}",
                    pytrace=False)
    return ok, why


@pytest.fixture(scope="module")
def scale(database_url: str, redis_urls: dict[str, str]) -> Iterator[ScaleOut]:
    if BROKER_DB > 15:
        pytest.fail(f"the scale-out broker needs Redis database {BROKER_DB}: use "
                    f"HITL_TEST_REDIS_DB_BASE of 12 or less", pytrace=False)
    broker_url = f"{REDIS}/{BROKER_DB}"
    try:
        redis.Redis.from_url(broker_url).flushdb()
    except redis.RedisError as exc:
        pytest.fail(f"Redis is required and not reachable: {exc!r}", pytrace=False)
    db_url = fresh_database(databases.named(database_url, "_scaleout"))
    results_url, notify_url = redis_urls["result_backend"], redis_urls["redis"]
    env = {
        "HITL_BROKER_URL": broker_url,
        "HITL_DATABASE_URL": db_url,
        "HITL_VISIBILITY_TIMEOUT_S": str(VISIBILITY_TIMEOUT_S),
        "HITL_TIMER_HORIZON_S": str(TIMER_HORIZON_S),
        "HITL_DB_POOL_SIZE": "2",
    }
    log_dir = ARTIFACTS / "logs" / "scaleout"
    app = app_for(broker_url)
    system = System(app, log_dir, env)
    use_netns, why_not = _choose_mode()
    hosts_net: netns.VirtualHosts | None = None
    scale = ScaleOut(system, app, broker_url, db_url,
                     "network namespaces" if use_netns else "processes", why_not)
    try:
        worker_env: dict[str, str] = {}
        if use_netns:
            hosts_net = netns.VirtualHosts(HOSTS).up()
            gw = hosts_net.gateway
            pg, rd = make_url(db_url), urlsplit(REDIS)
            pg_port, redis_port = pg.port or 5432, rd.port or 6379
            scale.forwarder_stats.unlink(missing_ok=True)
            scale.forwarder = Proc("tcp-forward", [
                sys.executable, "-m", "tests.scaleout.tcp_forward", str(scale.forwarder_stats),
                f"{gw}:{pg_port}={pg.host}:{pg_port}",
                f"{gw}:{redis_port}={rd.hostname}:{redis_port}",
            ], log_dir=log_dir).start()
            _wait_for_line(scale.forwarder, "ready")
            # What a worker host is configured with: the services' address on its network.
            worker_env = {
                "HITL_BROKER_URL": _with_host(broker_url, gw, redis_port),
                "HITL_RESULT_BACKEND_URL": _with_host(results_url, gw, redis_port),
                "HITL_REDIS_URL": _with_host(notify_url, gw, redis_port),
                "HITL_DATABASE_URL": pg.set(host=gw, port=pg_port).render_as_string(
                    hide_password=False),
            }
            scale.addresses = dict(hosts_net.addresses)
        for host in HOSTS:
            prefix = hosts_net.prefix(host) if hosts_net else ()
            proc = system.start_worker("worker", CONCURRENCY, host=host, prefix=prefix,
                                       env=worker_env)
            scale.hosts[host] = proc.name
        system.start_beat()
        yield scale
    finally:
        system.stop_all()
        if scale.forwarder is not None:
            scale.forwarder.stop()
        if hosts_net is not None:
            hosts_net.down()
        app.close()


def _wait_for_line(proc: Proc, text: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive:
            raise RuntimeError(f"{proc.name} exited early:\n{proc.tail()}")
        if text in proc.tail():
            return
        time.sleep(0.05)
    raise TimeoutError(f"{proc.name} did not say {text!r}:\n{proc.tail()}")


@pytest.fixture
def scale_flow(scale: ScaleOut) -> Iterator[ExitListener]:
    """The flow engine of the scaled-out system: its exits, on its broker."""
    with ExitListener(scale.broker_url, f"flow-scale-{uuid.uuid4().hex[:10]}") as listener:
        yield listener
