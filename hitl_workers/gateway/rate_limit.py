"""Per-agent rate of events (docs/contract.md §8 "Limits"): a token bucket per agent and gateway
process, so one client hammering claims cannot starve everyone else's.

Each agent may send ``HITL_GATEWAY_EVENT_RATE_PER_S`` (20) claims, rejects, closes and status
changes a second, in bursts of as many; beyond that the answer is 429 with ``Retry-After``.
The buckets live in the process: behind N gateways an agent may reach N times the rate, which
still bounds it (the load balancer spreads one client's requests).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from hitl_workers.gateway.auth import current_agent

MAX_BUCKETS = 50_000
"""Past this many agents, full buckets are forgotten (a full bucket is the default)."""


class RateLimiter:
    def __init__(self, rate_per_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate_per_s = rate_per_s
        self.burst = max(1.0, rate_per_s)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # agent -> (tokens, at)

    def wait_s(self, agent_id: str) -> float:
        """0 when ``agent_id`` may send an event now (and it is counted), else how many
        seconds until it may."""
        now = self._clock()
        tokens, at = self._buckets.get(agent_id, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate_per_s)
        if tokens >= 1:
            self._remember(agent_id, tokens - 1, now)
            return 0.0
        self._remember(agent_id, tokens, now)
        return (1 - tokens) / self.rate_per_s

    def _remember(self, agent_id: str, tokens: float, now: float) -> None:
        if len(self._buckets) >= MAX_BUCKETS and agent_id not in self._buckets:
            self._buckets = {a: (t, at) for a, (t, at) in self._buckets.items()
                             if t + (now - at) * self.rate_per_s < self.burst}
        self._buckets[agent_id] = (tokens, now)


async def within_event_rate(request: Request,
                            agent_id: Annotated[str, Depends(current_agent)]) -> str:
    """The token's agent, when it is within its rate of events; 429 otherwise."""
    wait_s = request.app.state.rate_limiter.wait_s(agent_id)
    if wait_s > 0:
        raise HTTPException(
            429, f"agent {agent_id!r} sent more than "
                 f"{request.app.state.rate_limiter.rate_per_s:g} events a second; retry "
                 f"in {wait_s:.2f} s",
            headers={"Retry-After": str(max(1, math.ceil(wait_s)))})
    return agent_id


RateLimitedAgent = Annotated[str, Depends(within_event_rate)]
