"""The shared stream readers (gateway/hub.py) lose and repeat nothing: a client that keeps
dropping and resuming with its last id, while entries are written without pause, gets every
entry exactly once and in order."""

from __future__ import annotations

import json
import threading
import time

import redis

from hitl_workers.notify.streams import stream_key
from tests.gateway.harness import sse

ENTRIES = 300


def test_resuming_again_and_again_under_writes_misses_and_repeats_nothing(
        gateway, agents, redis_urls):
    alice = agents()
    client = redis.Redis.from_url(redis_urls["redis"], decode_responses=True)
    written: list[str] = []
    stop = threading.Event()

    def write() -> None:
        for n in range(ENTRIES):
            if stop.is_set():
                return
            written.append(client.xadd(stream_key(alice), {"event": json.dumps(
                {"type": "assistance.requested", "id": f"n-{n}"})}))
            time.sleep(0.01)

    writer = threading.Thread(target=write, daemon=True)
    received: list[str] = []
    position = None
    with sse(gateway, alice) as first:
        position = first.next().id  # "now", before anything was written
    writer.start()
    deadline = time.monotonic() + 120
    try:
        # Reconnect every few entries, from the last id seen, while the writer goes on.
        while writer.is_alive() or len(received) < len(written):
            assert time.monotonic() < deadline, (len(received), len(written))
            with sse(gateway, alice, headers={"Last-Event-ID": position}) as stream:
                assert stream.status == 200
                for _ in range(7):
                    try:
                        message = stream.next_event(timeout=3)
                    except Exception:
                        break  # quiet: the writer is done
                    received.append(message.id)
                    position = message.id
            if not writer.is_alive() and len(received) >= len(written):
                break
    finally:
        stop.set()
        writer.join(timeout=10)
    assert received == written, (len(received), len(written))
    assert len(set(received)) == ENTRIES
