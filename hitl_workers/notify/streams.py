"""Agent notifications on Redis Streams: one stream per agent, ``hitl:agent:<agent_id>``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import redis

STREAM_PREFIX = "hitl:agent:"


def stream_key(agent_id: str) -> str:
    return f"{STREAM_PREFIX}{agent_id}"


class StreamPublisher:
    def __init__(self, client: redis.Redis, maxlen: int) -> None:
        self.client = client
        self.maxlen = maxlen

    def publish(self, agent_ids: Sequence[str], event: dict[str, Any]) -> None:
        """Append ``event`` to each agent's stream, in one round trip."""
        if not agent_ids:
            return
        data = json.dumps(event, separators=(",", ":"))
        pipe = self.client.pipeline(transaction=False)
        for agent_id in agent_ids:
            # Approximate trimming keeps XADD O(1); a console that was away longer than
            # ``maxlen`` entries reloads its bell list instead of replaying.
            pipe.xadd(stream_key(agent_id), {"event": data}, maxlen=self.maxlen,
                      approximate=True)
        pipe.execute()


class StreamJanitor:
    """Retention for the agents' streams: delete the streams of agents no longer in the
    directory, and trim the others' entries older than the retention period (they hold
    contact data; MAXLEN alone keeps a quiet agent's entries forever)."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def agent_ids(self) -> list[str]:
        """Every agent that has a stream (SCAN: never blocks Redis for long)."""
        ids = []
        for key in self.client.scan_iter(match=f"{STREAM_PREFIX}*", count=1000, _type="stream"):
            text = key.decode() if isinstance(key, bytes) else str(key)
            ids.append(text[len(STREAM_PREFIX):])
        return ids

    def delete(self, agent_ids: Sequence[str]) -> int:
        if not agent_ids:
            return 0
        return int(self.client.delete(*(stream_key(a) for a in agent_ids)))

    def trim_before(self, agent_ids: Sequence[str], cutoff_ms: int) -> int:
        """Remove entries older than ``cutoff_ms`` (entry ids start with their Unix ms)."""
        if not agent_ids:
            return 0
        pipe = self.client.pipeline(transaction=False)
        for agent_id in agent_ids:
            pipe.xtrim(stream_key(agent_id), minid=cutoff_ms, approximate=False)
        return sum(int(n or 0) for n in pipe.execute())
