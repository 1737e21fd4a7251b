"""The notification fan-out against a real Redis: one script call appends the same event to
many agents' streams, exactly as one XADD per agent did (CONTRACT §6: one entry per agent
stream, field ``event``, approximate trimming)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
import redis

from hitl_workers.notify import streams
from hitl_workers.notify.streams import StreamPublisher, stream_key


@pytest.fixture
def client(redis_urls: dict[str, str]) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_urls["redis"])
    yield client
    client.close()


def agents(n: int) -> list[str]:
    prefix = uuid.uuid4().hex[:8]
    return [f"fan-{prefix}-{i:05d}" for i in range(n)]


def test_every_agent_gets_one_entry_with_the_event_beyond_one_script_call(client):
    ids = agents(streams.FAN_OUT_CHUNK * 2 + 7)  # three script calls
    StreamPublisher(client, maxlen=100).publish(ids, {"type": "x", "n": 1})
    for agent_id in (ids[0], ids[streams.FAN_OUT_CHUNK], ids[-1]):
        entries = client.xrange(stream_key(agent_id))
        assert len(entries) == 1
        assert set(entries[0][1]) == {b"event"}
        assert json.loads(entries[0][1][b"event"]) == {"type": "x", "n": 1}
    assert sum(client.xlen(stream_key(a)) for a in ids) == len(ids)


def test_streams_are_trimmed_approximately(client):
    [agent_id] = agents(1)
    publisher = StreamPublisher(client, maxlen=10)
    for n in range(1000):
        publisher.publish([agent_id], {"n": n})
    # MAXLEN ~ trims whole nodes (100 entries each by default): at least maxlen kept, and
    # far fewer than were written.
    assert 10 <= client.xlen(stream_key(agent_id)) <= 200


def test_a_flushed_script_cache_is_reloaded_and_nothing_is_lost_or_doubled(client):
    ids = agents(3)
    publisher = StreamPublisher(client, maxlen=100)
    publisher.publish(ids, {"n": 1})
    client.script_flush()  # as after a Redis restart: EVALSHA answers NOSCRIPT
    publisher.publish(ids, {"n": 2})
    for agent_id in ids:
        events = [json.loads(f[b"event"]) for _, f in client.xrange(stream_key(agent_id))]
        assert events == [{"n": 1}, {"n": 2}]


def test_a_stream_that_refuses_its_entry_does_not_stop_the_others(client):
    first, bad, last = agents(3)
    client.set(stream_key(bad), "not a stream")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        StreamPublisher(client, maxlen=100).publish([first, bad, last], {"n": 1})
    assert client.xlen(stream_key(first)) == 1
    assert client.xlen(stream_key(last)) == 1
    client.delete(stream_key(bad))
