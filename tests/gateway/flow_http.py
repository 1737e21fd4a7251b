"""A flow engine that speaks only HTTP (docs/contract.md §10): service-token helpers for the
``/v1`` tests."""

from __future__ import annotations

import time
from typing import Any

import httpx


def service_token(name: str = "flow-engine-tests") -> str:
    from hitl_workers.gateway.service_auth import make_service_token

    return make_service_token(name)


def service_bearer(name: str = "flow-engine-tests") -> dict[str, str]:
    return {"Authorization": f"Bearer {service_token(name)}"}


class HttpFlowEngine:
    """Starts, polls and cancels steps over ``/v1`` with a service token, nothing else."""

    def __init__(self, base_url: str, name: str = "flow-engine-tests") -> None:
        self.http = httpx.Client(base_url=base_url, timeout=30, headers=service_bearer(name))

    def __enter__(self) -> HttpFlowEngine:
        return self

    def __exit__(self, *_: Any) -> None:
        self.http.close()

    def start(self, request: dict[str, Any]) -> httpx.Response:
        return self.http.post("/v1/executions", json=request)

    def status(self, execution_id: str) -> httpx.Response:
        return self.http.get(f"/v1/executions/{execution_id}")

    def wait_for_end(self, execution_id: str, timeout: float = 20.0) -> dict[str, Any]:
        """Poll the execution until it is no longer waiting; its last view."""
        deadline = time.monotonic() + timeout
        while True:
            view: dict[str, Any] = self.status(execution_id).json()
            if view.get("state") != "waiting" or time.monotonic() > deadline:
                return view
            time.sleep(0.1)
