"""What a use case asks to be done after its transaction commits.

Nothing is published before commit: a consumer must never see a message about a row that was
rolled back, or that it cannot read yet.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class OutboxMessage:
    id: int
    kind: str
    execution_id: str | None
    payload: Mapping[str, Any]


@dataclass(frozen=True)
class StepEnded:
    """An execution left ``waiting`` (or failed at once): for the exit metrics."""

    state: str
    exit: str | None
    merge_field: Mapping[str, Any] | None
    dispatched_at: datetime | None
    at: datetime


@dataclass(frozen=True)
class TimerFired:
    """A deadline fired ``at``, due at ``due_at``: for the lateness metric."""

    kind: str
    due_at: datetime
    at: datetime


@dataclass(frozen=True)
class OffersChanged:
    """Offers made or withdrawn (§9), and why: for the offer metrics."""

    change: str
    """``made``, ``withdrawn`` or ``missed`` (a sequential offer's timeout passed)."""
    reason: str
    count: int = 1


@dataclass(frozen=True)
class FirstOffer:
    """A step's first offer (broadcast or sequential, §9): for time-to-first-offer."""

    requested_at: datetime
    at: datetime


Observation = StepEnded | TimerFired | OffersChanged | FirstOffer


@dataclass
class Effects:
    outbox: list[OutboxMessage] = field(default_factory=list)
    """Outbox rows to publish now (the reconciler re-sends any that this misses)."""
    arm: list[tuple[str, str, datetime]] = field(default_factory=list)
    """(execution id, timer kind, due at): ETA wake-ups to publish."""
    revoke: list[tuple[str, str]] = field(default_factory=list)
    """(execution id, timer kind): wake-ups no longer needed. An optimisation only."""
    observations: list[Observation] = field(default_factory=list)
    """Metrics to count once the transaction committed (never for one rolled back)."""
    execution: tuple[str, str | None] | None = None
    """(execution id, conversation id) the task turned out to be about, for its log lines."""
    reassess: list[tuple[str, str]] = field(default_factory=list)
    """(agent id, what changed): agents whose ability to claim may have changed, so that
    waiting steps' offers follow it (services/routing.py, §9), each in its own transaction."""

    def merge(self, other: Effects) -> None:
        self.outbox += other.outbox
        self.arm += other.arm
        self.revoke += other.revoke
        self.observations += other.observations
        self.reassess += other.reassess

    def __bool__(self) -> bool:
        return bool(self.outbox or self.arm or self.revoke or self.observations)


def timer_task_id(execution_id: str, kind: str) -> str:
    """The wake-up's deterministic task id: the same deadline is always the same task."""
    return f"hitl-timer:{kind}:{execution_id}"
