"""Acceptance-tier fixtures."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(scope="session")
def _session_flow(system: Any) -> Iterator[Any]:
    from hitl_workers.ops.flow_engine import ExitListener

    listener = ExitListener(os.environ["HITL_BROKER_URL"], f"flow-test-{uuid.uuid4().hex[:10]}")
    with listener:
        yield listener


@pytest.fixture
def flow(_session_flow: Any) -> Any:
    """One flow engine for the whole session (execution ids are unique per test, so its exits
    never mix). Stopping a listener waits out the Redis transport's one-second poll; once per
    session instead of once per test saves about a minute."""
    return _session_flow
