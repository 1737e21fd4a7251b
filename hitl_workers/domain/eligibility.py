"""Who may see a conversation, and who is offered it at dispatch (docs/contract.md §1, §3, §5)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from hitl_workers.domain.names import NotClaimedReason


@dataclass(frozen=True)
class AgentView:
    agent_id: str
    status: str
    rule_groups: tuple[tuple[str, ...], ...]
    capacity: int | None = None
    """How many conversations it may hold claimed at once (None: unlimited, §9)."""
    load: int = 0
    """How many it holds now (other than the one being decided on): conversations whose
    ``claimed_by`` holds it."""

    @property
    def at_capacity(self) -> bool:
        return self.capacity is not None and self.load >= self.capacity


@dataclass(frozen=True)
class Audience:
    """The part of a step's settings that decides who may act."""

    specific_agent_id: str | None = None
    allow_busy: bool = False
    allow_offline: bool = False

    @property
    def allowed_statuses(self) -> frozenset[str]:
        statuses = {"available"}
        if self.allow_busy:
            statuses.add("busy")
        if self.allow_offline:
            statuses.add("offline")
        return frozenset(statuses)


def can_see(rule_groups: Iterable[Sequence[str]], tags: Iterable[str]) -> bool:
    """True when some rule group has all of its tags among the conversation's tags.

    An empty group matches every conversation; an agent with no groups sees nothing.
    """
    tag_set = set(tags)
    return any(set(group) <= tag_set for group in rule_groups)


def refusal(agent: AgentView | None, tags: Iterable[str], audience: Audience) -> str | None:
    """Why ``agent`` may not claim now, or None when it may (the §3 rule)."""
    if agent is None:
        return "unknown_agent"
    if audience.specific_agent_id is not None and agent.agent_id != audience.specific_agent_id:
        return "not_the_specific_agent"
    # The specific agent, too, must be able to see the conversation (§1: else NO_AGENTS).
    # Decision: §3's "eligible to see the conversation (or is the specific agent)" is read as
    # "being the specific agent" narrowing who may act, not replacing the visibility rule, so
    # that "may claim now" is the same test dispatch applies to decide who is offered it.
    if not can_see(agent.rule_groups, tags):
        return "not_eligible"
    if agent.status not in audience.allowed_statuses:
        return f"status_not_allowed:{agent.status}"
    if agent.at_capacity:
        return AT_CAPACITY
    return None


AT_CAPACITY = "at_capacity"
"""The refusal of an agent whose load has reached its capacity (§9): at dispatch it counts as
busy; its claim answers outcome ``at_capacity``."""


@dataclass(frozen=True)
class Selection:
    notified: tuple[str, ...]
    skipped: dict[str, str] = field(default_factory=dict)
    """agent id → reason, for the audit trail ("why was agent X not notified?")."""
    not_claimed: NotClaimedReason | None = None


def select_agents(
    agents: Iterable[AgentView], tags: Sequence[str], audience: Audience
) -> Selection:
    """The agents to offer the conversation to at dispatch, or why nobody can be offered it."""
    notified: list[str] = []
    skipped: dict[str, str] = {}
    seeing = 0
    waits_for_a_slot = False
    for agent in agents:
        reason = refusal(agent, tags, audience)
        if reason is None:
            notified.append(agent.agent_id)
            seeing += 1
        elif reason.startswith("status_not_allowed") or reason == AT_CAPACITY:
            skipped[agent.agent_id] = reason
            seeing += 1
            # At capacity counts as busy (§9): a step that allows busy agents waits for a slot.
            waits_for_a_slot |= reason == AT_CAPACITY and audience.allow_busy
        elif audience.specific_agent_id in (None, agent.agent_id):
            # With a specific agent, every other agent is trivially "not the one": not worth
            # a row each in the audit trail. The specific agent's own reason is.
            skipped[agent.agent_id] = reason
    if notified or waits_for_a_slot:
        return Selection(tuple(notified), skipped)
    if seeing == 0:
        if audience.specific_agent_id is not None:
            skipped.setdefault(audience.specific_agent_id, "unknown_agent")
        return Selection((), skipped, "NO_AGENTS")
    return Selection((), skipped, "NOT_AVAILABLE")
