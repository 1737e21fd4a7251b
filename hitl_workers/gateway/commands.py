"""``hitl-workers gateway`` and ``hitl-workers token`` (registered in :mod:`hitl_workers.cli`)."""

from __future__ import annotations

import logging
import re
from typing import Any

import click

from hitl_workers.domain.request import ID_PATTERN


@click.command("gateway")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--keepalive-s", default=15.0, show_default=True, type=click.FloatRange(0.1, 15),
              help="Longest silence on an event stream before a keep-alive comment.")
@click.option("--graceful-timeout-s", default=25, show_default=True, type=click.IntRange(0),
              help="On shutdown, how long claims in flight may take to finish (event "
                   "streams end at once; browsers reconnect and resume).")
@click.option("--log-level", default="info", show_default=True)
def gateway(host: str, port: int, keepalive_s: float, graceful_timeout_s: int,
            log_level: str) -> None:
    """Serve the agent gateway and console (HTTP + Server-Sent Events)."""
    import uvicorn

    from hitl_workers.gateway.app import create_app, request_stop
    from hitl_workers.gateway.tokens import WeakSecret
    from hitl_workers.settings import get_settings

    settings = get_settings()
    try:
        app = create_app(settings, keepalive_s=keepalive_s)
    except WeakSecret as exc:
        raise click.ClickException(str(exc)) from exc

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            # Event streams never finish by themselves: end them now, so shutdown waits only
            # for real requests (claims) and browsers move on to a live gateway.
            if self.started and self.servers:
                loop = self.servers[0].get_loop()
                loop.call_soon_threadsafe(request_stop, app)
            super().handle_exit(sig, frame)

    logging.basicConfig(level=log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.dev_login:
        click.echo("WARNING: HITL_DEV_LOGIN=true: anyone can sign in as any agent "
                   "(GET /dev/token/AGENT_ID). Never enable it in production.", err=True)
    # access_log off: uvicorn's would print EventSource URLs, tokens included; the gateway
    # logs each request itself without the query string.
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                            proxy_headers=True, timeout_graceful_shutdown=graceful_timeout_s)
    click.echo(f"agent console: http://{host}:{port}/", err=True)
    Server(config).run()


@click.command("token")
@click.argument("agent_id", required=False)
@click.option("--service", metavar="NAME",
              help="Print a service token for a flow engine (the /v1 routes) instead.")
def token(agent_id: str | None, service: str | None) -> None:
    """Print a signed token that lets its holder act as AGENT_ID (secret: HITL_SECRET).

    Open the console with it: http://127.0.0.1:8000/?token=TOKEN

    With --service NAME instead: a service token for a flow engine, for the /v1 routes
    (Authorization: Bearer TOKEN). The two kinds never stand in for each other.
    """
    if (agent_id is None) == (service is None):
        raise click.UsageError("give either AGENT_ID or --service NAME")
    name = agent_id if agent_id is not None else service
    assert name is not None
    if len(name) > 128 or not re.match(ID_PATTERN, name):
        what = "an agent id" if agent_id is not None else "a service name"
        raise click.BadParameter(f"{what} is 1-128 characters from A-Z a-z 0-9 . _ : @ -",
                                 param_hint="AGENT_ID" if agent_id is not None else "--service")
    from hitl_workers.gateway.tokens import WeakSecret, make_token, require_strong_secret
    from hitl_workers.settings import get_settings

    settings = get_settings()
    try:
        require_strong_secret(settings)  # a token signed with a guessable secret is worthless
    except WeakSecret as exc:
        raise click.ClickException(str(exc)) from exc
    if service is not None:
        from hitl_workers.gateway.service_auth import make_service_token

        click.echo(make_service_token(service))
        return
    click.echo(make_token(name, settings))
