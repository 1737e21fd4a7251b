"""Is a token's agent still in the directory? Asked on every request, answered from a short
cache (docs/contract.md §8: a token stops working when its agent is removed).

A token is only a signature: it cannot be revoked, so a removed agent's token would otherwise
work until it expires. The gateway asks the database instead, at most once per agent every
``HITL_GATEWAY_AGENT_CACHE_S`` (2 s) per gateway process: a removal takes effect within that
time, and a burst of requests costs one indexed primary-key read. Open event streams are
checked too, all of a process's at once, every ``HITL_GATEWAY_STREAM_RECHECK_S``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from hitl_workers.store import bell
from hitl_workers.store.db import read_only

if TYPE_CHECKING:
    from hitl_workers.gateway.hub import StreamHub

log = logging.getLogger(__name__)

MAX_ENTRIES = 50_000
"""Past this many cached agents the cache starts over (it only saves reads)."""


def _existing_now(agent_ids: list[str]) -> set[str]:
    with read_only() as conn:
        return bell.existing_agents(conn, agent_ids)


def _exists_now(agent_id: str) -> bool:
    with read_only() as conn:
        return bell.agent_exists(conn, agent_id)


class AgentDirectory:
    def __init__(self, ttl_s: float, lookup: Callable[[str], bool] = _exists_now,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._lookup = lookup
        self._clock = clock
        self._known: dict[str, tuple[bool, float]] = {}

    async def exists(self, agent_id: str) -> bool:
        """Whether ``agent_id`` is in the directory (as of at most ``ttl_s`` ago)."""
        now = self._clock()
        cached = self._known.get(agent_id)
        if cached is not None and now - cached[1] < self.ttl_s:
            return cached[0]
        # Two requests may both miss and both read: harmless, the later answer wins.
        exists = await asyncio.to_thread(self._lookup, agent_id)
        if len(self._known) >= MAX_ENTRIES:
            self._known.clear()
        self._known[agent_id] = (exists, self._clock())
        return exists


async def end_removed_agents_streams(hub: StreamHub, every_s: float) -> None:
    """Every ``every_s``, end the open event streams of agents no longer in the directory:
    one query for all the agents connected to this process, however many streams they have.
    Their reconnect then gets 401 (a removed agent's token stops working)."""
    while True:
        await asyncio.sleep(every_s)
        connected = hub.agents()
        if not connected:
            continue
        try:
            present = await asyncio.to_thread(_existing_now, connected)
        except Exception as exc:  # the database is down: try again next time
            log.warning("could not check the connected agents: %r", exc)
            continue
        for agent_id in set(connected) - present:
            hub.end_agent(agent_id, "the agent was removed from the directory")
