"""A token works only while its agent is in the directory and until it expires (docs/contract.md
§8 "Limits"): a removed agent's token gets 401, and an open event stream ends when its token
expires."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.gateway.harness import KEEPALIVE_S, Gateway, SSEMessage, bearer, make_token, sse


def wait_for_status(api, path: str, headers: dict[str, str], status: int,
                    within_s: float = 6.0) -> float:
    started = time.monotonic()
    while True:
        response = api.get(path, headers=headers)
        if response.status_code == status:
            return time.monotonic() - started
        assert time.monotonic() - started < within_s, (response.status_code, response.text)
        time.sleep(0.2)


def test_a_removed_agents_token_gets_401(api, agents, client, waiting):
    # Given Alice's token works
    alice = agents()
    step = waiting()
    headers = bearer(alice)
    assert api.get("/me", headers=headers).status_code == 200
    # When she is removed from the directory
    assert client.call("hitl.remove_agent", agent_id=alice)["status"] == "removed"
    # Then within the cache time (2 s) every endpoint refuses her token
    took = wait_for_status(api, "/me", headers, 401)
    assert took < 4
    for method, path in [("GET", f"/agents/{alice}/requests"),
                         ("GET", f"/agents/{alice}/events"),
                         ("POST", f"/executions/{step['execution_id']}/claim")]:
        response = api.request(method, path, headers=headers)
        assert response.status_code == 401, (path, response.text)
        assert "not in the directory" in response.json()["detail"]
        assert response.headers["www-authenticate"] == "Bearer"


@pytest.fixture
def short_token_gateway(system) -> Iterator[Gateway]:
    gateway = Gateway("gateway-short-tokens", env={
        "HITL_TOKEN_MAX_AGE_S": "3", "HITL_TOKEN_CLOCK_LEEWAY_S": "0"}).start()
    try:
        yield gateway
    finally:
        gateway.stop()


def comments_until_the_end(stream) -> list[str]:
    """Read ``stream`` until the gateway ends it; the comment lines it sent on the way."""
    comments: list[str] = []
    while True:
        item = stream.messages.get(timeout=10)  # queue.Empty: the stream did not end in time
        if not isinstance(item, SSEMessage):  # the reader's end-of-stream marker
            return comments
        comments += item.comments


def test_an_open_stream_ends_when_its_token_expires(short_token_gateway, agents):
    alice = agents()
    token = make_token(alice)
    opened = time.monotonic()
    with sse(short_token_gateway, alice, token=token) as stream:
        assert stream.status == 200
        comments = comments_until_the_end(stream)
    lived = time.monotonic() - opened
    assert "token expired" in comments
    assert 1.5 < lived < 6, lived  # issued up to 1 s before (whole-second stamps), lives 3 s
    # and the same token cannot open it again
    with sse(short_token_gateway, alice, token=token) as again:
        assert again.status == 401


@pytest.fixture
def quick_recheck_gateway(system) -> Iterator[Gateway]:
    gateway = Gateway("gateway-quick-recheck",
                      env={"HITL_GATEWAY_STREAM_RECHECK_S": "1"}).start()
    try:
        yield gateway
    finally:
        gateway.stop()


def test_a_removed_agents_open_stream_ends(quick_recheck_gateway, agents, client):
    alice, bob = agents(), agents()
    with sse(quick_recheck_gateway, alice) as alices, sse(quick_recheck_gateway, bob) as bobs:
        assert alices.status == bobs.status == 200
        alices.next()
        bobs.next()
        # When Alice is removed
        assert client.call("hitl.remove_agent", agent_id=alice)["status"] == "removed"
        removed_at = time.monotonic()
        comments = comments_until_the_end(alices)
        # Then her stream ends within the recheck time, saying why
        assert time.monotonic() - removed_at < 5
        assert "the agent was removed from the directory" in comments
        # And Bob's goes on
        message = bobs.next(timeout=KEEPALIVE_S + 5)
        assert message.comments == ["keep-alive"]
