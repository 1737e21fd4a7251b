"""Per-agent limits (docs/contract.md §8 "Limits"): a rate of events and a cap on concurrent event
streams, both 429 with Retry-After; and every stream of a gateway shares a bounded set of
Redis connections, so many streams cannot exhaust Redis's clients."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import httpx
import pytest
import redis

from hitl_workers.notify.streams import stream_key
from tests.gateway.harness import Gateway, bearer, close_all, sse


def test_events_beyond_the_rate_get_429_and_other_agents_are_not_slowed(gateway, agents):
    # Given Mallory fires 80 claims at once (the limit is 20 a second, bursts of 20)
    mallory, alice = agents(), agents()
    headers = {agent: bearer(agent) for agent in (mallory, alice)}
    http = httpx.Client(base_url=gateway.url, timeout=30,
                        limits=httpx.Limits(max_connections=80))

    def claim(agent: str) -> httpx.Response:
        return http.post("/executions/exec-nowhere/claim", headers=headers[agent])

    with http, ThreadPoolExecutor(80) as pool:
        started = time.monotonic()
        answers = list(pool.map(claim, [mallory] * 80))
        took_s = time.monotonic() - started
        # Then no more than the burst plus what refilled meanwhile went through
        limited = [a for a in answers if a.status_code == 429]
        passed = [a for a in answers if a.status_code == 404]
        assert len(limited) + len(passed) == 80, {a.status_code for a in answers}
        assert limited, f"none limited in {took_s:.2f} s"
        assert len(passed) <= 20 + 20 * took_s + 1, (len(passed), took_s)
        for answer in limited[:3]:
            assert int(answer.headers["retry-after"]) >= 1
            assert "events a second" in answer.json()["detail"]
        # And Alice is not limited by Mallory's burst
        assert claim(alice).status_code == 404
        # And after a second Mallory may send again
        time.sleep(1.1)
        assert claim(mallory).status_code == 404


def test_status_changes_count_as_events(gateway, agents):
    alice = agents()
    url = f"{gateway.url}/agents/{alice}/status"
    headers = bearer(alice)
    with httpx.Client(timeout=30, limits=httpx.Limits(max_connections=60)) as http, \
            ThreadPoolExecutor(60) as pool:
        codes = list(pool.map(lambda _: http.put(url, headers=headers, json={
            "status": "available"}).status_code, range(60)))
    assert 429 in codes and set(codes) == {200, 429}, codes


def test_more_than_five_streams_of_one_agent_get_429(gateway, agents):
    alice, bob = agents(), agents()
    with ExitStack() as open_streams:
        first = [open_streams.enter_context(sse(gateway, alice)) for _ in range(5)]
        assert [s.status for s in first] == [200] * 5
        # the sixth of the same agent is refused
        response = httpx.get(f"{gateway.url}/agents/{alice}/events", headers=bearer(alice))
        assert response.status_code == 429
        assert int(response.headers["retry-after"]) >= 1
        assert "5 open event streams" in response.json()["detail"]
        # another agent is not affected
        with sse(gateway, bob) as other:
            assert other.status == 200
        # once one is closed, a new one may open
        first[0].close()
        deadline = time.monotonic() + 10
        while True:
            with sse(gateway, alice) as again:
                if again.status == 200:
                    break
            assert time.monotonic() < deadline, "the closed stream's slot never came back"
            time.sleep(0.3)


NOTIFY_DB = int(os.environ.get("HITL_TEST_REDIS_DB_BASE", "10")) + 3


@pytest.fixture
def own_redis_gateway(system) -> Iterator[tuple[Gateway, redis.Redis]]:
    """A gateway reading notifications from a Redis database of its own, so its connections
    can be counted."""
    base = os.environ["HITL_REDIS_URL"].rsplit("/", 1)[0]
    url = f"{base}/{NOTIFY_DB}"
    client = redis.Redis.from_url(url, decode_responses=True)
    client.flushdb()
    gateway = Gateway("gateway-own-redis", env={"HITL_REDIS_URL": url}).start()
    try:
        yield gateway, client
    finally:
        gateway.stop()


def gateway_connections(client: redis.Redis) -> int:
    return sum(1 for c in client.client_list()
               if int(c["db"]) == NOTIFY_DB and c["id"] != str(client.client_id()))


def test_streams_share_a_bounded_set_of_redis_connections(own_redis_gateway, agents):
    gateway, client = own_redis_gateway
    people = [agents() for _ in range(12)]
    idle = gateway_connections(client)
    with ExitStack() as open_streams:
        # 60 streams: 12 agents with 5 each
        readers = {agent: [open_streams.enter_context(sse(gateway, agent)) for _ in range(5)]
                   for agent in people}
        # (runs first on the way out: all sixty closed at once, not one at a time)
        open_streams.callback(close_all, [s for streams in readers.values() for s in streams])
        for streams in readers.values():
            for stream in streams:
                assert stream.status == 200
                stream.next()  # connected
        held = gateway_connections(client)
        # the readers (8) plus the command pool (8), however many streams are open
        assert held <= 16, (idle, held)
        # and every stream still gets its agent's entries, in order, each once
        for agent in people:
            for n in range(3):
                client.xadd(stream_key(agent), {"event": json.dumps(
                    {"type": "assistance.requested", "id": f"{agent}-{n}"})})
        for agent, streams in readers.items():
            for stream in streams:
                got = [stream.next_event().json["id"] for _ in range(3)]
                assert got == [f"{agent}-{n}" for n in range(3)]
                assert stream.events_until_quiet(0.3) == []
    assert gateway_connections(client) <= 16
