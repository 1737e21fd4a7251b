"""Running the reassessments a committed change asked for (services/routing.py, §9)."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from sqlalchemy.engine import Connection

from hitl_workers.clock import utcnow
from hitl_workers.services import routing
from hitl_workers.services.effects import Effects
from hitl_workers.tasks.common import after_commit, in_transaction

log = logging.getLogger(__name__)


def follow(changes: Iterable[tuple[str, str]]) -> None:
    """For each (agent id, what changed): reassess every candidate step, one transaction each.

    After the change committed, in the task that made it (so within a second of it). A
    failure here changes nothing already committed and never fails the task: the step's
    offers stay as they were, and the bell list (§8) still shows the agent what it may claim.
    """
    for agent_id, why in changes:
        try:
            _follow(agent_id, why)
        except Exception:
            log.exception("offers of %s did not follow its change (%s)", agent_id, why)


def _follow(agent_id: str, why: str) -> None:
    steps: list[str] = in_transaction(lambda conn: routing.candidates(conn, agent_id))
    for execution_id in steps:
        def step(conn: Connection, execution_id: str = execution_id) -> tuple[str, Effects]:
            return routing.reassess(conn, execution_id, agent_id, why, utcnow())
        _outcome, effects = in_transaction(step)
        after_commit(effects)
