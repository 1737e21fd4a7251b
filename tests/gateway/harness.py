"""A real gateway process (``hitl-workers gateway``) for the HTTP and browser tests, and a
small Server-Sent Events reader."""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from hitl_workers.ops.processes import Proc
from tests.support.fixtures import ARTIFACTS
from tests.support.ports import free_port

KEEPALIVE_S = 2.0


def cli() -> list[str]:
    script = Path(sys.executable).parent / "hitl-workers"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from hitl_workers.cli import main; main()"]


class Gateway:
    """``hitl-workers gateway`` on a port of its own, restartable on that same port."""

    def __init__(self, name: str = "gateway", *, port: int | None = None,
                 env: Mapping[str, str] | None = None, keepalive_s: float = KEEPALIVE_S,
                 ready_path: str = "/healthz") -> None:
        self.name = name
        self.port = port or free_port()
        self.env = dict(env or {})
        self.keepalive_s = keepalive_s
        self.ready_path = ready_path
        self.proc: Proc | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> Gateway:
        self.starts += 1
        cmd = [*cli(), "gateway", "--host", "127.0.0.1", "--port", str(self.port),
               "--keepalive-s", str(self.keepalive_s), "--graceful-timeout-s", "5"]
        self.proc = Proc(f"{self.name}-{self.port}", cmd, env=self.env,
                         log_dir=ARTIFACTS / "logs").start()
        deadline = time.monotonic() + timeout
        while True:
            if not self.proc.alive:
                pytest.fail(f"the gateway exited at start:\n{self.proc.tail()}")
            try:
                if httpx.get(self.url + self.ready_path, timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the gateway was not ready in {timeout}s:\n{self.proc.tail()}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(timeout=15)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()

    def restart(self) -> Gateway:
        self.stop()
        return self.start()


def make_token(agent_id: str) -> str:
    from hitl_workers.gateway.tokens import make_token as make

    return make(agent_id)


def bearer(agent_id: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(agent_id)}"}


@dataclass
class SSEMessage:
    event: str | None = None
    id: str | None = None
    data: str | None = None
    comments: list[str] = field(default_factory=list)
    retry: int | None = None

    @property
    def json(self) -> Any:
        return json.loads(self.data or "null")


class SSEReader:
    """Reads an SSE response on a thread; the test takes parsed messages from a queue."""

    def __init__(self, url: str, *, params: Mapping[str, str] | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        self.client = httpx.Client(timeout=httpx.Timeout(10, read=60))
        self.url, self.params, self.headers = url, dict(params or {}), dict(headers or {})
        self.messages: queue.Queue[SSEMessage | BaseException | None] = queue.Queue()
        self.status: int | None = None
        self.response_headers: httpx.Headers | None = None
        self._opened = threading.Event()
        self._response: httpx.Response | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SSEReader:
        self._thread.start()
        if not self._opened.wait(15):
            raise TimeoutError(f"no response from {self.url}")
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    def close(self) -> None:
        self.stop()
        self.join()

    def join(self, timeout: float = 5) -> None:
        """Wait for the reading thread to end (it ends when its closed socket next wakes)."""
        self._thread.join(timeout=timeout)

    def stop(self) -> None:
        """Close the stream without waiting for its reading thread (see :func:`close_all`)."""
        if self._response is not None:
            self._response.close()
        self.client.close()

    def _run(self) -> None:
        try:
            with self.client.stream("GET", self.url, params=self.params,
                                    headers=self.headers) as response:
                self._response = response
                self.status = response.status_code
                self.response_headers = response.headers
                self._opened.set()
                if response.status_code != 200:
                    response.read()
                    return
                current = SSEMessage()
                for line in response.iter_lines():
                    if line == "":
                        self.messages.put(current)
                        current = SSEMessage()
                    elif line.startswith(":"):
                        current.comments.append(line[1:].strip())
                    else:
                        name, _, value = line.partition(":")
                        value = value[1:] if value.startswith(" ") else value
                        if name == "data":
                            current.data = value if current.data is None else \
                                f"{current.data}\n{value}"
                        elif name == "retry":
                            current.retry = int(value)
                        elif name in ("event", "id"):
                            setattr(current, name, value)
        except BaseException as exc:  # the test closed the stream, or it broke
            self.messages.put(exc)
        finally:
            self._opened.set()
            self.messages.put(None)

    def next(self, timeout: float = 15.0) -> SSEMessage:
        item = self.messages.get(timeout=timeout)
        if not isinstance(item, SSEMessage):
            raise AssertionError(f"the event stream ended: {item!r}")
        return item

    def next_event(self, timeout: float = 15.0) -> SSEMessage:
        """The next message that carries data (comments and id-only messages skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            message = self.next(max(0.01, deadline - time.monotonic()))
            if message.data is not None:
                return message

    def events_until_quiet(self, quiet_s: float = 1.5) -> list[SSEMessage]:
        events: list[SSEMessage] = []
        while True:
            try:
                message = self.next(quiet_s)
            except queue.Empty:
                return events
            if message.data is not None:
                events.append(message)


def close_all(readers: Iterable[SSEReader]) -> None:
    """Close many streams at once. A reading thread ends only when its socket next wakes it
    (the gateway's keep-alive at the latest), so closing sixty streams one at a time waited
    for each in turn (over 100 s in CI); stopped together, they wait for one wake-up."""
    readers = list(readers)
    for reader in readers:
        reader.stop()
    for reader in readers:
        reader.join()


def sse(gateway: Gateway, agent_id: str, *, token: str | None = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None) -> SSEReader:
    query = {"token": token or make_token(agent_id), **(params or {})}
    return SSEReader(f"{gateway.url}/agents/{agent_id}/events", params=query, headers=headers)


def gateway_fixture(system: Any, name: str = "gateway") -> Iterator[Gateway]:
    del system  # started first: the gateway needs the migrated database and the workers
    gateway = Gateway(name).start()
    try:
        yield gateway
    finally:
        gateway.stop()


def env_without(*names: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in names}
