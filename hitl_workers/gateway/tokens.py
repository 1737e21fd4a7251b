"""Signed agent tokens (docs/contract.md §8).

A token is ``itsdangerous.URLSafeTimedSerializer`` output over ``{"agent_id": …}``, signed with
``HITL_SECRET`` and valid for ``HITL_TOKEN_MAX_AGE_S``. It names exactly one agent: the gateway
lets it act as that agent and no other. There is no server-side session to revoke; rotate
``HITL_SECRET`` to invalidate every token at once.
"""

from __future__ import annotations

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from hitl_workers.errors import HitlError
from hitl_workers.settings import Settings, get_settings

SALT = "hitl-agent-token"
"""Keeps these signatures apart from anything else signed with the same secret."""


class InvalidToken(HitlError):
    """The agent token is missing, forged, malformed or expired; ask for a new one
    (``hitl-workers token AGENT_ID``)."""


def _serializer(settings: Settings) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(settings.secret, salt=SALT)


def make_token(agent_id: str, settings: Settings | None = None) -> str:
    """A token that lets its holder act as ``agent_id``."""
    return _serializer(settings or get_settings()).dumps({"agent_id": agent_id})


def agent_of(token: str, settings: Settings | None = None) -> str:
    """The agent id ``token`` was issued for.

    Raises :class:`InvalidToken` when the signature does not check out (a forged token, or one
    signed with another secret), the payload is not ours, or the token is older than
    ``token_max_age_s``.
    """
    settings = settings or get_settings()
    try:
        payload = _serializer(settings).loads(token, max_age=settings.token_max_age_s)
    except SignatureExpired as exc:
        raise InvalidToken("the agent token has expired; ask for a new one") from exc
    except BadSignature as exc:
        raise InvalidToken("the agent token is not valid (bad signature)") from exc
    agent_id = payload.get("agent_id") if isinstance(payload, dict) else None
    if not isinstance(agent_id, str) or not agent_id:
        raise InvalidToken("the agent token names no agent")
    return agent_id
