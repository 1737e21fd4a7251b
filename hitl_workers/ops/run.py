"""``hitl-workers run``: the whole system on one machine, for a first look.

Starts Redis if it is installed but stopped, upgrades the schema (SQLite by default), starts a
worker on every queue, beat, Flower and the agent gateway, runs the simulator, leaves a request
waiting for a human, and keeps everything up until Ctrl-C.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import click
import redis

from hitl_workers.ops.processes import Proc, beat_cmd, flower_cmd, wait_for_workers, worker_cmd
from hitl_workers.settings import Settings

REDIS_HINT = (
    "Redis is needed (broker and notifications) and redis-server is not installed.\n"
    "Install it with `sudo apt-get install redis-server` (Debian/Ubuntu), "
    "`sudo dnf install redis` (Fedora) or `brew install redis` (macOS), then run this again."
)


def ensure_redis(url: str, echo: Any) -> None:
    """Reach Redis at ``url``; start a local one when it is installed but not running."""
    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    try:
        client.ping()
        return
    except redis.ConnectionError:
        pass
    parsed = urlparse(url)
    if parsed.hostname not in ("localhost", "127.0.0.1", "::1"):
        raise click.ClickException(f"Redis at {url} is not reachable")
    server = shutil.which("redis-server")
    if server is None:
        raise click.ClickException(REDIS_HINT)
    port = str(parsed.port or 6379)
    echo(f"starting a local Redis on port {port} ({server})")
    subprocess.run([server, "--port", port, "--bind", "127.0.0.1", "--daemonize", "yes",
                    "--save", "", "--appendonly", "no"], check=True)
    for _ in range(50):
        try:
            client.ping()
            return
        except redis.ConnectionError:
            time.sleep(0.1)
    raise click.ClickException(f"started redis-server, but {url} still does not answer")


def with_run_secret(settings: Settings, echo: Any) -> Settings:
    """``settings`` with a usable ``HITL_SECRET``: the one set, when it is strong, or a fresh
    random one for this run only (the gateway refuses a weak one). Put in the environment, so
    the processes started below sign and check tokens with the same one."""
    from hitl_workers.gateway.tokens import secret_problem

    if secret_problem(settings) is None:
        return settings
    secret = secrets.token_urlsafe(32)
    os.environ["HITL_SECRET"] = secret
    echo("HITL_SECRET is not set (or weak): using a random one for this run; tokens from "
         "this run stop working when it ends")
    return settings.model_copy(update={"secret": secret})


def _interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


def run_system(settings: Settings, *, gateway_port: int, flower_port: int, simulate: bool,
               log_dir: Path, echo: Any) -> None:
    from hitl_workers.app import app
    from hitl_workers.store.migrate import upgrade

    settings = with_run_secret(settings, echo)
    ensure_redis(settings.broker_url, echo)
    ensure_redis(settings.redis_url, echo)
    upgrade(settings.database_url)
    echo(f"database {settings.database_url} is at the latest schema")

    node = "dev@%h"
    procs = [
        Proc("worker", worker_cmd(node, concurrency=2), log_dir=log_dir),
        Proc("beat", beat_cmd(log_dir / "beat-schedule"), log_dir=log_dir),
        Proc("flower", flower_cmd(settings, port=flower_port), log_dir=log_dir),
        Proc("gateway", [sys.executable, "-m", "hitl_workers.cli", "gateway",
                         "--port", str(gateway_port)], log_dir=log_dir),
    ]
    for proc in procs:
        proc.start()
    try:
        import socket

        wait_for_workers(app, [node.replace("%h", socket.gethostname())], timeout=60,
                         procs=procs[:1])
        echo(f"worker, beat, Flower and the agent gateway are up (logs in {log_dir}/)")
        if simulate:
            from hitl_workers.ops.simulate import Simulator

            echo("\nThe simulator plays a flow engine and a handful of agents:\n")
            simulator = Simulator(app, echo)
            simulator.run(leave_waiting=True)
        from hitl_workers.gateway.tokens import make_token

        console = f"http://127.0.0.1:{gateway_port}/?token="
        echo(f"\nAgent console:  {console}{make_token('alice', settings)}")
        echo(f"                (signed in as alice; bob: {console}{make_token('bob', settings)})")
        auth = ("basic auth from HITL_FLOWER_BASIC_AUTH" if settings.flower_basic_auth
                else "no auth: set HITL_FLOWER_BASIC_AUTH=user:password to require one")
        echo(f"Flower:         http://127.0.0.1:{flower_port}/  ({auth})")
        echo(f"Metrics:        http://127.0.0.1:{gateway_port}/metrics")
        echo("Health:         hitl-workers status")
        if simulate:
            echo(f"What happened:  hitl-workers show sim-{simulator.run_id}:claimed")
        echo("Press Ctrl-C to stop.")
        signal.signal(signal.SIGTERM, _interrupt)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        echo("stopping...")
        for proc in reversed(procs):
            proc.stop()
