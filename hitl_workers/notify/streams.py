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
