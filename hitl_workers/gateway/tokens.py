"""Signed agent tokens (docs/contract.md §8).

A token is ``itsdangerous.URLSafeTimedSerializer`` output over ``{"agent_id": …}``, signed with
``HITL_SECRET`` and valid for ``HITL_TOKEN_MAX_AGE_S`` (give or take
``HITL_TOKEN_CLOCK_LEEWAY_S``, so gateways whose clocks differ by a few seconds accept each
other's tokens). It names exactly one agent: the gateway lets it act as that agent and no
other, and only while that agent is in the directory (:mod:`hitl_workers.gateway.auth`).
Rotate ``HITL_SECRET`` to invalidate every token at once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeTimedSerializer

from hitl_workers.errors import HitlError
from hitl_workers.settings import Settings, get_settings

SALT = "hitl-agent-token"
"""Keeps these signatures apart from anything else signed with the same secret."""

MIN_SECRET_LEN = 32
MAKE_SECRET = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
PLACEHOLDER_MARKS = ("change-me", "changeme", "change_me", "replace-me", "replaceme",
                     "placeholder", "example", "insecure", "your-secret", "not-a-secret")
"""A secret containing one of these was copied from a sample file (the old built-in default
was ``dev-insecure-secret-change-me``): anyone who read the sample can sign tokens with it."""


class InvalidToken(HitlError):
    """The agent token is missing, forged, malformed or expired; ask for a new one
    (``hitl-workers token AGENT_ID``)."""


class WeakSecret(HitlError):
    """``HITL_SECRET`` is unset, too short or a known placeholder: anyone could sign agent
    tokens with it. Set it to a long random value."""


def secret_problem(settings: Settings) -> str | None:
    """Why ``settings.secret`` must not sign tokens, or None when it may."""
    secret = settings.secret
    lowered = secret.strip().lower()
    if "secret" not in settings.model_fields_set or not lowered:
        return "HITL_SECRET is not set"
    if len(secret) < MIN_SECRET_LEN:
        return f"HITL_SECRET is {len(secret)} characters; it needs at least {MIN_SECRET_LEN}"
    if any(mark in lowered for mark in PLACEHOLDER_MARKS):
        return "HITL_SECRET is a placeholder from a sample file"
    if len(set(secret)) < 8:
        return "HITL_SECRET is not random (fewer than 8 different characters)"
    return None


def require_strong_secret(settings: Settings) -> None:
    """Raise :class:`WeakSecret`, saying how to make a good secret, unless it is one."""
    problem = secret_problem(settings)
    if problem is not None:
        raise WeakSecret(f"{problem}. Agent tokens signed with it could be forged, so the "
                         f"gateway will not use it. Make one with\n    {MAKE_SECRET}\nand "
                         f"set it as HITL_SECRET (the same value on every gateway).")


def _serializer(settings: Settings) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(settings.secret, salt=SALT)


def make_token(agent_id: str, settings: Settings | None = None) -> str:
    """A token that lets its holder act as ``agent_id``."""
    return _serializer(settings or get_settings()).dumps({"agent_id": agent_id})


@dataclass(frozen=True)
class TokenClaims:
    agent_id: str
    expires_at: float
    """Unix seconds after which the token is refused (leeway included)."""


def check_token(token: str, settings: Settings | None = None,
                now: float | None = None) -> TokenClaims:
    """Who ``token`` was issued for and until when it is valid.

    Raises :class:`InvalidToken` when the signature does not check out (a forged token, or one
    signed with another secret), the payload is not ours, or the token is older than
    ``token_max_age_s`` (or was issued in the future) by more than the clock leeway.
    """
    settings = settings or get_settings()
    now = time.time() if now is None else now
    try:
        # max_age checked below, with the leeway itsdangerous does not offer.
        payload, signed_at = _serializer(settings).loads(token, return_timestamp=True)
    except BadSignature as exc:
        raise InvalidToken("the agent token is not valid (bad signature)") from exc
    leeway = settings.token_clock_leeway_s
    issued = signed_at.timestamp()
    if issued > now + leeway:
        raise InvalidToken("the agent token was issued in the future (check the clocks of "
                           "the machines that make and check tokens)")
    expires_at = issued + settings.token_max_age_s + leeway
    if now > expires_at:
        raise InvalidToken("the agent token has expired; ask for a new one")
    agent_id = payload.get("agent_id") if isinstance(payload, dict) else None
    if not isinstance(agent_id, str) or not agent_id:
        raise InvalidToken("the agent token names no agent")
    return TokenClaims(agent_id, expires_at)


def agent_of(token: str, settings: Settings | None = None) -> str:
    """The agent id ``token`` was issued for (see :func:`check_token`)."""
    return check_token(token, settings).agent_id
