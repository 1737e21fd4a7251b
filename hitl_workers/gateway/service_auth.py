"""Service tokens: what a flow engine shows the ``/v1`` routes (docs/contract.md §10).

A service token is ``itsdangerous`` output over ``{"service": NAME}``, signed with
``HITL_SECRET`` like an agent token but under another salt: a signature made for one kind never
checks out as the other, so an agent token cannot start steps or edit the directory, and a
service token cannot claim. ``hitl-workers token --service NAME`` prints one.

A service token does not expire (a flow engine is a deployment, not a browser session); revoke
every token at once by rotating ``HITL_SECRET``. It is taken only from ``Authorization:
Bearer``, never from the query string, so it does not end up in access logs.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from itsdangerous import BadSignature, URLSafeTimedSerializer

from hitl_workers.gateway.tokens import InvalidToken, agent_of
from hitl_workers.settings import Settings, get_settings

SERVICE_SALT = "hitl-service-token"
"""Not the agent tokens' salt (``tokens.SALT``): the two kinds can never stand in for each
other."""

_bearer = HTTPBearer(auto_error=False, scheme_name="ServiceToken",
                     description="Authorization: Bearer <service token> "
                                 "(`hitl-workers token --service NAME`)")


class InvalidServiceToken(InvalidToken):
    """The service token is missing, forged or malformed; print a new one with
    ``hitl-workers token --service NAME``."""


def _serializer(settings: Settings) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(settings.secret, salt=SERVICE_SALT)


def make_service_token(service: str, settings: Settings | None = None) -> str:
    """A token that lets its holder use the ``/v1`` routes as ``service``."""
    return _serializer(settings or get_settings()).dumps({"service": service})


def service_of(token: str, settings: Settings | None = None) -> str:
    """The service name ``token`` was issued for; :class:`InvalidServiceToken` otherwise."""
    try:
        payload = _serializer(settings or get_settings()).loads(token)
    except BadSignature as exc:
        raise InvalidServiceToken("the service token is not valid (bad signature)") from exc
    service = payload.get("service") if isinstance(payload, dict) else None
    if not isinstance(service, str) or not service:
        raise InvalidServiceToken("the service token names no service")
    return service


def is_service_token(token: str, settings: Settings | None = None) -> bool:
    """True when ``token`` is a valid service token (used to answer 403, not 401, when one is
    shown to an agent route)."""
    try:
        service_of(token, settings)
    except InvalidServiceToken:
        return False
    return True


def _is_agent_token(token: str, settings: Settings) -> bool:
    try:
        agent_of(token, settings)
    except InvalidToken:
        return False
    return True


async def current_service(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The service the request's bearer token names: 401 without a valid token, 403 for an
    agent's token (valid, but the wrong kind)."""
    settings: Settings = request.app.state.settings
    if bearer is None or not bearer.credentials:
        raise HTTPException(401, "no service token: send Authorization: Bearer <service token> "
                                 "(hitl-workers token --service NAME prints one)",
                            headers={"WWW-Authenticate": "Bearer"})
    try:
        return service_of(bearer.credentials, settings)
    except InvalidServiceToken as exc:
        if _is_agent_token(bearer.credentials, settings):
            raise HTTPException(403, "this is an agent token; the /v1 routes need a service "
                                     "token (hitl-workers token --service NAME)") from exc
        raise HTTPException(401, str(exc), headers={"WWW-Authenticate": "Bearer"}) from exc


CurrentService = Annotated[str, Depends(current_service)]
