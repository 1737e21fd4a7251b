"""Bodies over 64 KiB get 413 before the gateway reads them (docs/contract.md §8 "Limits"), with or
without a token, whether the size is declared (Content-Length) or streamed (chunked); a
300 MB POST leaves the gateway's memory flat."""

from __future__ import annotations

import json
import select
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gateway.harness import Gateway, bearer

LIMIT = 64 * 1024
MB = 1024 * 1024


def post_raw(gateway: Gateway, path: str, *, body_bytes: int, chunked: bool,
             headers: dict[str, str] | None = None, chunk: int = 16 * 1024) -> tuple[int, dict]:
    """POST ``body_bytes`` of JSON (padded with spaces) over a raw socket, stopping as soon as the
    server answers; returns the status and the JSON body of the answer, and how much was
    sent (in the answer dict under ``_sent``)."""
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{gateway.port}",
             "Content-Type: application/json"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    lines.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {body_bytes}")
    sent = 0
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        piece = b" " * chunk
        prefix = b'{"event_id": "e-1"}'  # valid JSON, then whitespace up to the size
        try:
            while sent < body_bytes:
                readable, _, _ = select.select([sock], [], [], 0)
                if readable:
                    break  # the server answered already: stop sending, like a real client
                data = piece[: min(chunk, body_bytes - sent)]
                if sent == 0:
                    data = prefix + data[len(prefix):]
                sock.sendall(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
                sent += len(data)
            else:
                if chunked:
                    sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed while we were still sending: it read no further
        response = b""
        try:
            while b"\r\n\r\n" not in response or not _complete(response):
                data = sock.recv(65536)
                if not data:
                    break
                response += data
        except ConnectionResetError:
            pass
    head, _, payload = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    answer = json.loads(payload or b"{}")
    answer["_sent"] = sent
    answer["_headers"] = head.decode().lower()
    return status, answer


def _complete(response: bytes) -> bool:
    head, _, payload = response.partition(b"\r\n\r\n")
    for line in head.decode().lower().split("\r\n"):
        if line.startswith("content-length:"):
            return len(payload) >= int(line.split(":")[1])
    return False


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("with_token", [False, True], ids=["no-token", "token"])
def test_a_body_over_64_kib_is_413(gateway, agents, chunked, with_token):
    headers = bearer(agents()) if with_token else {}
    status, answer = post_raw(gateway, "/executions/exec-1/claim", body_bytes=4 * MB,
                              chunked=chunked, headers=headers)
    assert status == 413
    assert "larger than 65536 bytes" in answer["detail"]
    assert "connection: close" in answer["_headers"]
    # refused long before the client got far: at most what sits in socket buffers
    assert answer["_sent"] < 4 * MB


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_at_the_limit_goes_through_to_the_usual_checks(gateway, chunked):
    status, answer = post_raw(gateway, "/executions/exec-1/claim", body_bytes=LIMIT,
                              chunked=chunked)
    assert status == 401, answer  # no token: refused as usual, not for its size


def test_every_endpoint_is_limited(gateway, agents):
    alice = agents()
    for path in (f"/agents/{alice}/status", "/nowhere", "/healthz"):
        status, _ = post_raw(gateway, path, body_bytes=MB, chunked=False)
        assert status == 413, path


def rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


@pytest.fixture
def fresh_gateway(system) -> Iterator[Gateway]:
    gateway = Gateway("gateway-body-limit").start()
    try:
        yield gateway
    finally:
        gateway.stop()


def test_a_300_mb_post_leaves_the_gateways_memory_flat(fresh_gateway):
    pid = fresh_gateway.proc.popen.pid
    before = rss_kib(pid, "VmHWM")  # the peak so far (start-up included)
    for chunked in (False, True):
        status, answer = post_raw(fresh_gateway, "/executions/exec-1/claim",
                                  body_bytes=300 * MB, chunked=chunked, chunk=256 * 1024)
        assert status == 413
        assert answer["_sent"] < 300 * MB
    peak = rss_kib(pid, "VmHWM")
    assert peak - before < 20 * 1024, f"RSS {before} KiB before, peak {peak} KiB"
