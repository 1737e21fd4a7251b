"""An agent's load for ``GET /me`` (store/agent_load.py), on PostgreSQL and on SQLite (`make
run`): the conversations whose ``claimed_by`` holds the agent, never another agent's, counted
whether or not it has a capacity (docs/contract.md §9)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from hitl_workers.clock import utcnow
from hitl_workers.store.agent_load import AgentLoad, agent_load
from hitl_workers.store.tables import agents, conversations
from tests.support import databases


@pytest.fixture(params=["postgresql", "sqlite"])
def engine(request: Any, database_url: str, tmp_path: Path) -> Any:
    url = database_url if request.param == "postgresql" else databases.fresh(
        f"sqlite:///{tmp_path / 'load.db'}")
    engine = sa.create_engine(url)
    yield engine
    engine.dispose()


def test_load_counts_only_the_conversations_holding_the_agent(engine: Any) -> None:
    # Given Ada (capacity 3), Bob (unlimited) and Ad, whose id is a prefix of Ada's
    run = uuid.uuid4().hex[:8]
    ada, bob, ad = f"ada-{run}", f"bob-{run}", f"ada-{run}"[:-1]
    now = utcnow()
    held_by = [[ada], [ada, bob], [bob], [], [ad], [f"{ada}x"]]
    with engine.begin() as conn:
        conn.execute(agents.insert(), [
            {"agent_id": a, "name": "", "status": "available", "rule_groups": [],
             "updated_at": now, "capacity": c} for a, c in ((ada, 3), (bob, None), (ad, 1))])
        conn.execute(conversations.insert(), [
            {"conversation_id": f"conv-{run}-{i}", "tags": [], "claimed_by": holders,
             "updated_at": now} for i, holders in enumerate(held_by)])
    # Then each load is its own
    with engine.connect() as conn:
        assert agent_load(conn, ada) == AgentLoad(ada, 3, 2)
        assert agent_load(conn, bob) == AgentLoad(bob, None, 2)
        assert agent_load(conn, ad) == AgentLoad(ad, 1, 1)
        # And an agent not in the directory has none
        assert agent_load(conn, f"nobody-{run}") is None
