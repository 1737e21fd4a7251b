"""The agent gateway: an ASGI app (FastAPI) served by uvicorn (``hitl-workers gateway``).

It reads agents' notification streams and the database (read-only, for the bell list), and
turns agent actions into the contract's Celery tasks. It holds no state of its own: run as
many as you like behind a load balancer; an SSE client that moves to another one resumes with
its ``Last-Event-ID``.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import redis.asyncio as aioredis
from fastapi import FastAPI, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from hitl_workers.domain.request import ID_PATTERN
from hitl_workers.gateway import errors, health, openapi, routes, v1
from hitl_workers.gateway.body_limit import BodyLimitMiddleware
from hitl_workers.gateway.bridge import TaskBridge
from hitl_workers.gateway.directory import AgentDirectory, end_removed_agents_streams
from hitl_workers.gateway.hub import BLOCK_MS, StreamHub
from hitl_workers.gateway.models import (
    ConsoleConfig,
    DevToken,
    ErrorBody,
    Health,
    ValidationErrorBody,
)
from hitl_workers.gateway.rate_limit import RateLimiter
from hitl_workers.gateway.telemetry import AccessMiddleware
from hitl_workers.gateway.tokens import make_token, require_strong_secret
from hitl_workers.settings import Settings, get_settings
from hitl_workers.store.db import get_engine

STATIC_DIR = Path(__file__).parent / "static"
KEEPALIVE_S = 15.0
RESULT_TIMEOUT_S = 20.0

# The console inserts server-sanitized HTML; this policy is the second lock on that door:
# no inline script, no script from anywhere but here, no plugins, no framing.
CONSOLE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"),
    # The first page load may carry ?token=…: never hand it to another site.
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


def request_stop(app: FastAPI) -> None:
    """Tell open event streams to end now (called when the server starts shutting down)."""
    hub = getattr(app.state, "hub", None)
    if hub is not None:
        hub.end_all("the gateway is shutting down; reconnect")


def create_app(settings: Settings | None = None, *, keepalive_s: float = KEEPALIVE_S,
               result_timeout_s: float = RESULT_TIMEOUT_S) -> FastAPI:
    """The gateway app. ``keepalive_s`` (at most 15 s, §8): the longest silence on an event
    stream; ``result_timeout_s``: how long a claim waits for a worker's answer."""
    settings = settings or get_settings()
    # Before anything listens: a guessable secret lets anyone sign tokens for any agent.
    require_strong_secret(settings)
    if not 0 < keepalive_s <= 15:
        raise ValueError("keepalive_s must be in (0, 15] seconds (docs/contract.md §8)")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        get_engine()  # created once here, not raced for by the first reads' threads
        # Every event stream shares these: a bounded pool for short commands (catch-up reads,
        # health) and the hub's readers, one blocking XREAD each (gateway/hub.py).
        app.state.redis = aioredis.Redis(connection_pool=aioredis.BlockingConnectionPool.from_url(
            settings.redis_url, max_connections=settings.gateway_redis_connections, timeout=10,
            decode_responses=True, socket_connect_timeout=3, socket_timeout=10,
            health_check_interval=30))
        app.state.hub = StreamHub(
            lambda: aioredis.Redis.from_url(
                settings.redis_url, decode_responses=True, single_connection_client=True,
                socket_connect_timeout=3, socket_timeout=BLOCK_MS / 1000 + 10),
            app.state.redis, readers=settings.gateway_stream_readers,
            max_per_agent=settings.gateway_max_streams_per_agent)
        app.state.hub.start()
        sweeper = asyncio.get_running_loop().create_task(end_removed_agents_streams(
            app.state.hub, settings.gateway_stream_recheck_s), name="hitl-gw-removed-agents")
        app.state.bridge = TaskBridge(result_timeout_s)
        app.state.directory = AgentDirectory(settings.gateway_agent_cache_s)
        app.state.rate_limiter = RateLimiter(settings.gateway_event_rate_per_s)
        # Everything built so far (modules, the app, pools) lives as long as the process: keep
        # it out of the cyclic collector's full passes, whose pauses grow with the heap and
        # delay every event stream at once (docs/gateway.md, "Scale").
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            sweeper.cancel()
            await app.state.hub.stop()
            app.state.bridge.close()
            await app.state.redis.aclose()

    app = FastAPI(
        title="hitl_workers agent gateway",
        version="1",
        summary="HTTP and Server-Sent Events for agent UIs (docs/contract.md §8).",
        description="Authenticate with a signed agent token: `Authorization: Bearer <token>` "
                    "or `?token=<token>` (`hitl-workers token AGENT_ID` prints one). "
                    "`/healthz` and `/metrics` need none.",
        lifespan=lifespan, docs_url=None, redoc_url=None,
    )
    app.state.settings = settings
    app.state.keepalive_s = keepalive_s
    errors.install(app)
    # Outside the routes, token checks and body parsers (inside the access log, which counts
    # the 413s): a body over the limit is refused before anything reads it.
    app.add_middleware(BodyLimitMiddleware)
    app.add_middleware(AccessMiddleware)
    app.include_router(routes.router, responses={
        422: {"model": ValidationErrorBody,
              "description": "Malformed request: unknown fields, wrong types, invalid JSON, "
                             "or an id that is not an id."}})
    v1.install(app)  # the flow engines' routes (docs/contract.md §10)
    _console(app, settings)
    _operations(app)
    openapi.install(app)
    return app


def _console(app: FastAPI, settings: Settings) -> None:
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=True, tags=["console"], response_class=FileResponse,
             summary="The agent console; /?token=… signs the agent in with that token",
             responses={200: {"content": {"text/html": {}},
                              "description": "The console page."}})
    async def console() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html",
                            headers=CONSOLE_HEADERS)

    @app.get("/console/config", response_model=ConsoleConfig, tags=["console"],
             summary="What the console may offer (the development sign-in)")
    async def console_config() -> dict[str, Any]:
        return {"dev_login": settings.dev_login}

    if settings.dev_login:
        @app.get("/dev/token/{agent_id}", response_model=DevToken, tags=["console"],
                 summary="DEVELOPMENT ONLY (HITL_DEV_LOGIN=true): a token for any agent",
                 responses={422: {"model": ValidationErrorBody}})
        async def dev_token(agent_id: Annotated[str, PathParam(
                pattern=ID_PATTERN, max_length=128)]) -> dict[str, Any]:
            return {"agent_id": agent_id, "token": make_token(agent_id, settings)}


def _operations(app: FastAPI) -> None:
    @app.get("/healthz", response_model=Health, tags=["operations"],
             summary="Liveness and readiness: database, broker, notifications Redis",
             responses={503: {"model": Health, "description": "A dependency is down."}})
    async def healthz(request: Request) -> JSONResponse:
        checks = await health.check_all(request.app.state.redis)
        failed = {name: state for name, state in checks.items() if state != "ok"}
        body = Health(status="unavailable" if failed else "ok", checks=checks,
                      detail=("; ".join(f"{k}: {v}" for k, v in failed.items()) or None))
        return JSONResponse(body.model_dump(), status_code=503 if failed else 200)

    @app.get("/metrics", tags=["operations"], response_class=Response,
             summary="Prometheus metrics (the project's names start with hitl_)",
             responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}},
                              "description": "Prometheus text exposition format."},
                        500: {"model": ErrorBody}})
    async def metrics() -> Response:
        # A thread: the business metrics query the database at each scrape.
        body = await asyncio.to_thread(generate_latest)
        return Response(body, media_type=CONTENT_TYPE_LATEST)
