"""Who is calling: the agent named by a valid token, and only that agent (docs/contract.md §8).

A valid token is signed with ``HITL_SECRET``, unexpired, and names an agent that is still in
the directory (a removed agent's tokens get 401 within ``HITL_GATEWAY_AGENT_CACHE_S``).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request
from fastapi.security import APIKeyQuery, HTTPAuthorizationCredentials, HTTPBearer

from hitl_workers.gateway.service_auth import is_service_token
from hitl_workers.gateway.tokens import InvalidToken, check_token

# auto_error=False: a missing credential is our 401 with our words, not FastAPI's 403.
_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <agent token>")
_query = APIKeyQuery(name="token", auto_error=False,
                     description="?token=<agent token> (for EventSource, which cannot set "
                                 "headers)")


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


async def current_agent(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    query_token: Annotated[str | None, Depends(_query)],
) -> str:
    """The agent id the request's token was issued for; 401 without a valid one."""
    token = bearer.credentials if bearer is not None else query_token
    if not token:
        raise _unauthorized("no agent token: send Authorization: Bearer <token> or ?token=")
    try:
        claims = check_token(token, request.app.state.settings)
    except InvalidToken as exc:
        if is_service_token(token, request.app.state.settings):  # valid, but the wrong kind
            raise HTTPException(403, "this is a service token; agent routes need an agent "
                                     "token (hitl-workers token AGENT_ID)") from exc
        raise _unauthorized(str(exc)) from exc
    if not await request.app.state.directory.exists(claims.agent_id):
        raise _unauthorized(f"agent {claims.agent_id!r} is not in the directory (removed?); "
                            "this token no longer works")
    # An event stream ends when its token expires.
    request.state.token_expires_at = claims.expires_at
    return claims.agent_id


async def path_agent(
    agent_id: Annotated[str, Path(description="The agent's id (percent-decoded).")],
    me: Annotated[str, Depends(current_agent)],
) -> str:
    """The ``{agent_id}`` of the path, when the token is that agent's; 403 otherwise.

    The id is compared exactly as decoded: a token for agent A never acts as agent B.
    """
    if agent_id != me:
        raise HTTPException(403, f"this token is for agent {me!r}; it may not act as "
                                 f"agent {agent_id!r}")
    return agent_id


CurrentAgent = Annotated[str, Depends(current_agent)]
PathAgent = Annotated[str, Depends(path_agent)]
