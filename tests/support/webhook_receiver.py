"""A flow engine's webhook receiver (docs/contract.md §10), run in the test process: a small
threading HTTP server on a free port that checks each POST's signature and hands each exit to
the flow engine's logic once, deduplicating on ``Hitl-Delivery`` as a real receiver must."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.support.ports import free_port


@dataclass
class Post:
    headers: dict[str, str]
    body: bytes
    signature_ok: bool
    answered: int


@dataclass
class Receiver:
    secret: str
    port: int = field(default_factory=free_port)
    answer: Callable[[int], int] = lambda number: 200
    """The status to answer the ``number``-th POST (1 for the first) with."""
    hold: threading.Event | None = None
    """When set for a POST number in ``hold_posts``, the handler waits for it first."""
    hold_posts: tuple[int, ...] = ()
    posts: list[Post] = field(default_factory=list)
    delivered: dict[str, dict[str, Any]] = field(default_factory=dict)
    """The flow engine's logic: each exit, once, by ``Hitl-Delivery``."""
    handed_to_logic: int = 0
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str = "/hitl/exit") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver._receive(self, raw)

            def log_message(self, *_: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.hold is not None:
            self.hold.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *_: Any) -> None:
        self.stop()

    def _receive(self, handler: BaseHTTPRequestHandler, raw: bytes) -> None:
        with self._lock:
            number = len(self.posts) + 1
            self.posts.append(Post(dict(handler.headers), raw, False, 0))
        if self.hold is not None and number in self.hold_posts:
            self.hold.wait(120)
        expected = "sha256=" + hmac.new(self.secret.encode(), raw, hashlib.sha256).hexdigest()
        signature_ok = hmac.compare_digest(handler.headers.get("Hitl-Signature", ""), expected)
        status = self.answer(number) if signature_ok else 401
        with self._lock:
            post = self.posts[number - 1]
            post.signature_ok, post.answered = signature_ok, status
            if signature_ok and 200 <= status < 300:
                delivery = handler.headers.get("Hitl-Delivery", "")
                if delivery not in self.delivered:  # a repeat is acknowledged, not re-run
                    self.delivered[delivery] = json.loads(raw)
                    self.handed_to_logic += 1
        handler.send_response(status)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    def wait_for(self, execution_id: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                found = self.delivered.get(f"exit:{execution_id}")
            if found is not None:
                return found
            time.sleep(0.05)
        raise AssertionError(f"no exit for {execution_id} within {timeout} s; "
                             f"posts: {[(p.answered, p.signature_ok) for p in self.posts]}")
