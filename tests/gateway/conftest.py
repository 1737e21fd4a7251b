"""Fixtures for the gateway's HTTP tests: a real ``hitl-workers gateway`` process in front of
the session's real workers, PostgreSQL and Redis."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.gateway.harness import Gateway, gateway_fixture


@pytest.fixture(scope="session")
def gateway(system: Any) -> Iterator[Gateway]:
    yield from gateway_fixture(system)


@pytest.fixture
def api(gateway: Gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        yield client


@pytest.fixture
def waiting(client: Any, flow: Any, team: str) -> Any:
    """``waiting(**settings) -> request``: a step put up for this test's team, waiting."""
    from tests.support.steps import request

    def start(**settings: Any) -> dict[str, Any]:
        settings.setdefault("timeout", "5m")
        step = request(team, flow.reply_to, **settings)
        result = client.call("hitl.request_assistance", **step)
        assert result["state"] == "waiting", result
        return step

    return start


@pytest.fixture
def service_api(gateway: Gateway) -> Iterator[httpx.Client]:
    """A client of the /v1 routes, with a service token (docs/contract.md §10)."""
    from tests.gateway.flow_http import service_bearer

    with httpx.Client(base_url=gateway.url, timeout=30, headers=service_bearer()) as client:
        yield client
