"""Server-Sent Events: live notifications, and a resume that misses and repeats nothing."""

from __future__ import annotations

import json
import time

import pytest
import redis

from hitl_workers.notify.streams import stream_key
from tests.gateway.harness import KEEPALIVE_S, sse


@pytest.fixture
def stream_ids(redis_urls):
    client = redis.Redis.from_url(redis_urls["redis"], decode_responses=True)

    def ids(agent_id: str, after: str = "-") -> list[str]:
        start = "-" if after == "-" else f"({after}"
        return [entry_id for entry_id, _ in client.xrange(stream_key(agent_id), min=start)]

    return ids


def test_live_notifications_carry_id_event_and_json_data(gateway, agents, waiting, streams,
                                                         stream_ids):
    # Given Alice connected without a position
    alice = agents()
    with sse(gateway, alice) as stream:
        assert stream.status == 200
        assert stream.response_headers["content-type"].startswith("text/event-stream")
        hello = stream.next()
        assert "connected" in hello.comments and hello.retry and hello.data is None
        # When a step is put up for her
        step = waiting(popup={"text": "**VIP** asks"})
        # Then it arrives as an SSE message whose id is the stream entry id
        message = stream.next_event()
    assert message.event == "assistance.requested"
    assert message.id == stream_ids(alice)[-1]
    assert message.json == streams.events(alice)[-1]
    assert message.json["execution_id"] == step["execution_id"]
    assert "<strong>VIP</strong>" in message.json["popup"]["html"]


def test_a_connection_without_position_starts_from_now(gateway, agents, waiting, stream_ids):
    alice = agents()
    waiting()
    old = stream_ids(alice)
    assert len(old) == 1
    with sse(gateway, alice) as stream:
        hello = stream.next()
        # "now" is announced as the position to resume from
        assert hello.id == old[-1]
        fresh = waiting()
        message = stream.next_event()
        assert message.json["execution_id"] == fresh["execution_id"]
        assert stream.events_until_quiet(1.0) == []


@pytest.mark.parametrize("how", ["header", "query"])
def test_resume_misses_nothing_and_repeats_nothing(gateway, agents, waiting, api, stream_ids,
                                                   how):
    from tests.gateway.harness import bearer

    # Given Alice saw one notification, then went away
    alice = agents()
    with sse(gateway, alice) as stream:
        stream.next()
        waiting()
        seen = stream.next_event()
    # While she was away: two more steps, one of them claimed (a withdrawal follows)
    second, third = waiting(), waiting()
    api.post(f"/executions/{second['execution_id']}/claim", headers=bearer(alice))
    missed = stream_ids(alice, after=seen.id)
    assert len(missed) == 3
    # When she reconnects from the last id she saw
    position = {"header": {"headers": {"Last-Event-ID": seen.id}},
                "query": {"params": {"last_event_id": seen.id}}}[how]
    with sse(gateway, alice, **position) as stream:
        replayed = [stream.next_event() for _ in missed]
        # Then she gets exactly what she missed, in order, then live ones, and nothing twice
        assert [m.id for m in replayed] == missed
        assert [m.event for m in replayed] == ["assistance.requested", "assistance.requested",
                                               "assistance.withdrawn"]
        fourth = waiting()
        live = stream.next_event()
        assert live.json["execution_id"] == fourth["execution_id"]
        assert stream.events_until_quiet(1.0) == []
    assert third


def test_header_wins_over_query(gateway, agents, waiting, stream_ids):
    alice = agents()
    waiting(), waiting()
    first, second = stream_ids(alice)
    with sse(gateway, alice, headers={"Last-Event-ID": first},
             params={"last_event_id": "0-0"}) as stream:
        assert [m.id for m in stream.events_until_quiet(1.0)] == [second]


def test_keep_alive_comment_while_idle(gateway, agents):
    alice = agents()
    with sse(gateway, alice) as stream:
        stream.next()
        started = time.monotonic()
        message = stream.next(timeout=KEEPALIVE_S + 5)
        assert message.comments == ["keep-alive"] and message.data is None
        assert time.monotonic() - started <= KEEPALIVE_S + 1.5


@pytest.mark.parametrize("position", ["yesterday", "1-2-3", "-1"])
def test_malformed_last_event_id_is_422(api, agents, position):
    from tests.gateway.harness import make_token

    alice = agents()
    response = api.get(f"/agents/{alice}/events",
                       params={"token": make_token(alice), "last_event_id": position})
    assert response.status_code == 422
    assert "last_event_id" in response.json()["detail"]
    response = api.get(f"/agents/{alice}/events", params={"token": make_token(alice)},
                       headers={"Last-Event-ID": position})
    assert response.status_code == 422


def test_open_streams_are_counted(gateway, api, agents):
    def gauge() -> float:
        for line in api.get("/metrics").text.splitlines():
            if line.startswith("hitl_gateway_sse_connections "):
                return float(line.split()[1])
        raise AssertionError("no hitl_gateway_sse_connections in /metrics")

    before = gauge()
    alice = agents()
    with sse(gateway, alice) as stream:
        stream.next()
        assert gauge() == before + 1
    deadline = time.monotonic() + 10
    while gauge() != before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert gauge() == before


def test_data_is_one_json_line(gateway, agents, waiting):
    alice = agents()
    with sse(gateway, alice) as stream:
        stream.next()
        waiting(popup={"text": "line one\nline two\n\n* item"})
        message = stream.next_event()
    assert "\n" not in message.data
    assert json.loads(message.data)["popup"]["text"] == "line one\nline two\n\n* item"
