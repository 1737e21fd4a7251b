"""Sequential offers (docs/contract.md §9 "Offer strategy"): who holds the step, who is next.

Pure, like the machine that uses it (:mod:`hitl_workers.domain.machine`): the caller reads,
under the execution's lock, the step's sequential offers (agent, status, round) and the
*pool* — every agent who can see the conversation, as it is now — and these functions say
who holds the offer and whom it passes to.

* The *holder* is the one agent whose sequential offer is ``offered`` or ``closed`` (a holder
  who closed the popup still holds until the offer timeout). The database makes "at most one"
  a constraint (a partial unique index on offers, revision 0007).
* The next holder, among *able* agents (the broadcast audience: tags, allowed status, not at
  capacity) who have not rejected: first those with no offer, a withdrawn one, or one from an
  earlier round; if none, a new round among those who missed (or were withdrawn). The first
  by ``order`` wins: ``longest_idle`` (oldest of last offer / last claim; never = first, ties
  by agent id) or ``fewest_claimed`` (lowest load, then longest idle, then agent id).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime

from hitl_workers.domain.eligibility import AgentView, Audience, refusal
from hitl_workers.domain.names import OfferOrder, OnMissed

HOLDING = frozenset({"offered", "closed"})
"""The statuses of a sequential offer whose agent holds the step."""


@dataclass(frozen=True)
class Candidate:
    """An agent who can see the step, as the next-holder choice needs it."""

    agent: AgentView
    held: int = 0
    """Conversations whose ``claimed_by`` holds it (other than this one), capacity or not."""
    idle_since: datetime | None = None
    """``greatest(last_offered_at, last_claimed_at)``; None: never offered nor claimed."""


@dataclass(frozen=True)
class Sequential:
    """The sequential part of an execution's view (None on the view: broadcast)."""

    offer_timeout_s: float = 30.0
    order: OfferOrder = "longest_idle"
    on_missed: OnMissed = "keep"
    rounds: Mapping[str, int] = field(default_factory=dict)
    """agent id → the round of its sequential offer (every offer of the step has one)."""
    pool: tuple[Candidate, ...] = ()

    def with_agent(self, agent: AgentView | None, agent_id: str) -> Sequential:
        """The pool with ``agent_id`` as ``agent`` (None: gone from the directory)."""
        others = tuple(c for c in self.pool if c.agent.agent_id != agent_id)
        if agent is None:
            return replace(self, pool=others)
        before = next((c for c in self.pool if c.agent.agent_id == agent_id), None)
        held = before.held if before is not None else agent.load
        idle = before.idle_since if before is not None else None
        return replace(self, pool=(*others, Candidate(agent, held, idle)))

    @property
    def round(self) -> int:
        """The current round (0 before any offer)."""
        return max(self.rounds.values(), default=0)


def holder(offers: Mapping[str, str], sequential: Sequential) -> str | None:
    """The agent holding the step's sequential offer, if any."""
    return next((a for a, status in offers.items()
                 if status in HOLDING and a in sequential.rounds), None)


def able(sequential: Sequential, tags: Iterable[str], audience: Audience) -> list[Candidate]:
    """The pool's agents who may claim now (the broadcast audience, §9)."""
    tags = tuple(tags)
    return [c for c in sequential.pool if refusal(c.agent, tags, audience) is None]


def round_for(agent_id: str, offers: Mapping[str, str], sequential: Sequential) -> int | None:
    """The round ``agent_id`` would be offered the step in; None if it never is (it
    rejected, or already holds it)."""
    status = offers.get(agent_id)
    if status == "rejected" or status in HOLDING:
        return None
    current = sequential.round
    if status in (None, "withdrawn") or sequential.rounds.get(agent_id, 0) < current:
        return max(current, 1)
    return current + 1  # missed in this round: only in the next one


def next_holder(offers: Mapping[str, str], sequential: Sequential, tags: Iterable[str],
                audience: Audience) -> tuple[str, int] | None:
    """(agent id, round) of the next holder, or None when nobody can be offered it now."""
    ranked: list[tuple[int, tuple[object, ...], str]] = []
    for candidate in able(sequential, tags, audience):
        agent_id = candidate.agent.agent_id
        offered_in = round_for(agent_id, offers, sequential)
        if offered_in is not None:
            ranked.append((offered_in, _order_key(candidate, sequential.order), agent_id))
    if not ranked:
        return None
    # The lowest round first (the current round before a new one), then the order.
    offered_in, _key, agent_id = min(ranked)
    return agent_id, offered_in


def _order_key(candidate: Candidate, order: OfferOrder) -> tuple[object, ...]:
    # Never idle-stamped comes first; then the oldest stamp; the agent id breaks ties.
    idle = (candidate.idle_since is not None,
            candidate.idle_since.timestamp() if candidate.idle_since else 0.0)
    if order == "fewest_claimed":
        return (candidate.held, *idle, candidate.agent.agent_id)
    return (*idle, candidate.agent.agent_id)


def everyone_able_rejected(offers: Mapping[str, str], sequential: Sequential,
                           tags: Iterable[str], audience: Audience) -> bool:
    """True when some agent may claim and every such agent has rejected: the step exits
    ``not_claimed / REJECTED``."""
    now_able = able(sequential, tags, audience)
    return bool(now_able) and all(offers.get(c.agent.agent_id) == "rejected"
                                  for c in now_able)
