"""Agent notifications on Redis Streams: one stream per agent, ``hitl:agent:<agent_id>``."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import redis

STREAM_PREFIX = "hitl:agent:"

FAN_OUT_CHUNK = 1000
"""Streams per script call. A script blocks Redis while it runs (about 1 µs per XADD), so a
fan-out to more agents than this is split into several calls, one round trip each."""

# One event appended to many streams in one command. Packing one XADD per agent in a
# pipeline cost redis-py ~9 µs of Python per agent (9 ms of a 1,000-agent fan-out); one EVALSHA
# carrying the keys costs under 1 ms. pcall, not call: like the pipeline it replaces, a stream
# that refuses its entry (a key of another type) does not stop the others getting theirs;
# the first error is answered after all ran.
FAN_OUT_SCRIPT = """
local first_error
for i = 1, #KEYS do
  local ok = redis.pcall('XADD', KEYS[i], 'MAXLEN', '~', ARGV[1], '*', 'event', ARGV[2])
  if type(ok) == 'table' and ok.err and not first_error then first_error = ok.err end
end
if first_error then return redis.error_reply(first_error) end
return #KEYS
"""
FAN_OUT_SHA = hashlib.sha1(FAN_OUT_SCRIPT.encode()).hexdigest()


def stream_key(agent_id: str) -> str:
    return f"{STREAM_PREFIX}{agent_id}"


class StreamPublisher:
    def __init__(self, client: redis.Redis, maxlen: int) -> None:
        self.client = client
        self.maxlen = maxlen

    def publish(self, agent_ids: Sequence[str], event: dict[str, Any]) -> None:
        """Append ``event`` to each agent's stream: one entry per stream, field ``event``,
        ``MAXLEN ~`` trimming; one round trip per :data:`FAN_OUT_CHUNK` agents."""
        if not agent_ids:
            return
        data = json.dumps(event, separators=(",", ":"))
        for start in range(0, len(agent_ids), FAN_OUT_CHUNK):
            keys = [stream_key(a) for a in agent_ids[start:start + FAN_OUT_CHUNK]]
            self._append(keys, data)

    def _append(self, keys: list[str], data: str) -> None:
        # Approximate trimming keeps XADD O(1); a console that was away longer than
        # ``maxlen`` entries reloads its bell list instead of replaying.
        try:
            self.client.evalsha(FAN_OUT_SHA, len(keys), *keys, self.maxlen, data)
        except redis.exceptions.NoScriptError:
            # Not in this Redis's script cache (the first call since it started, or after a
            # SCRIPT FLUSH); nothing ran. EVAL runs it with its text and caches it again.
            self.client.eval(FAN_OUT_SCRIPT, len(keys), *keys, self.maxlen, data)


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
