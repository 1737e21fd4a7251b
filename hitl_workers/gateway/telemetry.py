"""The gateway's own Prometheus metrics and access log.

Labels use the route template (``/agents/{agent_id}/events``), never the raw path, so the
number of series stays bounded whatever ids agents use. The access log leaves out the query
string: EventSource URLs carry the agent's token there.
"""

from __future__ import annotations

import logging
import time

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hitl_workers.observe import metrics_reader as business_metrics

log = logging.getLogger("hitl_workers.gateway.access")

REQUESTS = Counter("hitl_gateway_requests_total", "HTTP requests answered by the gateway.",
                   ["method", "route", "status"])
LATENCY = Histogram("hitl_gateway_request_duration_seconds",
                    "Time to the end of the response (an SSE stream: its whole life).",
                    ["method", "route"])
SSE_CONNECTIONS = Gauge("hitl_gateway_sse_connections", "Open Server-Sent Events streams.")
SSE_EVENTS = Counter("hitl_gateway_sse_events_total", "Notifications sent over SSE.")
SSE_RESUMES = Counter("hitl_gateway_sse_resumes_total",
                      "SSE connections that resumed from a Last-Event-ID.")
AGENT_EVENTS = Counter("hitl_gateway_agent_events_total",
                       "Claim, reject and close answered, by outcome.", ["action", "outcome"])

# The business metrics beside the gateway's own: what the worker processes on this host counted
# and the database's gauges, read at each scrape (hitl_workers.observe.metrics_reader,
# docs/operations.md).
business_metrics.register(REGISTRY)


def route_template(scope: Scope) -> str:
    """The matched route's template; the router records the route in the (shared) scope."""
    route = scope.get("route")
    return str(getattr(route, "path", None) or "unmatched")


class AccessMiddleware:
    """Counts, times and logs every HTTP request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = route_template(scope)
            elapsed = time.perf_counter() - started
            REQUESTS.labels(scope["method"], route, str(status)).inc()
            LATENCY.labels(scope["method"], route).observe(elapsed)
            log.info("%s %s %s %.1fms", scope["method"], scope["path"], status, elapsed * 1000)
