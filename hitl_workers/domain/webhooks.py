"""Webhook exits (docs/contract.md §10): which URLs a request may name, how the body is signed,
and when a failed delivery is tried again.

Pure functions: the workers and the gateway pass their settings in as a
:class:`WebhookPolicy` (validation context), so the domain never reads the environment.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

MAX_URL_CHARS = 2000
WEBHOOK_REPLY_TASK = "(webhook)"
"""What ``executions.reply_task`` holds for a step that answers to a webhook (the URL is in
``executions.reply_webhook``). The parentheses make it impossible as a Celery task name
(``reply_to.task`` is ``[A-Za-z0-9._:@-]+``), so it can never be mistaken for one."""
MIN_SECRET_CHARS = 32
TIMEOUT_S = 10.0
"""How long one POST may take (connecting included) before it counts as failed (§10)."""


@dataclass(frozen=True)
class WebhookPolicy:
    """What this process accepts: ``HITL_WEBHOOK_ALLOWED_HOSTS`` and whether a usable
    ``HITL_WEBHOOK_SECRET`` is set."""

    allowed_hosts: frozenset[str] = frozenset()
    any_host: bool = False
    secret_set: bool = False

    @classmethod
    def from_settings(cls, allowed_hosts: str, secret: str | None) -> WebhookPolicy:
        hosts = frozenset(h.strip().lower().rstrip(".") for h in allowed_hosts.split(",")
                          if h.strip())
        return cls(allowed_hosts=hosts - {"*"}, any_host="*" in hosts,
                   secret_set=bool(secret) and len(secret or "") >= MIN_SECRET_CHARS)


CONTEXT_KEY = "webhooks"
"""The key of the :class:`WebhookPolicy` in pydantic's validation context."""


def check_url(url: str, policy: WebhookPolicy | None) -> str:
    """``url`` when a request may name it as its webhook; else ValueError saying why.

    ``https`` for any allowed host; ``http`` only for a host listed by name (a local
    receiver), never through ``*``. No credentials in the URL, no fragment.
    """
    if policy is None or not policy.secret_set:
        raise ValueError("webhook exits are not enabled here: HITL_WEBHOOK_SECRET is not set "
                         f"(at least {MIN_SECRET_CHARS} characters) on the workers")
    if len(url) > MAX_URL_CHARS:
        raise ValueError(f"at most {MAX_URL_CHARS} characters are accepted")
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower().rstrip(".")
        parts.port  # noqa: B018 — raises ValueError for a port that is not a number
    except ValueError as exc:
        raise ValueError(f"not a valid URL: {exc}") from None
    if parts.scheme not in ("https", "http") or not host:
        raise ValueError("must be an absolute https:// URL (or http:// for a host listed in "
                         "HITL_WEBHOOK_ALLOWED_HOSTS)")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not carry credentials (user:password@); the body is signed "
                         "with HITL_WEBHOOK_SECRET instead")
    if parts.fragment:
        raise ValueError("must not have a fragment (#…)")
    listed = host in policy.allowed_hosts
    if not listed and not policy.any_host:
        raise ValueError(f"host {host!r} is not allowed; the hosts allowed are set in "
                         "HITL_WEBHOOK_ALLOWED_HOSTS")
    if parts.scheme == "http" and not listed:
        raise ValueError(f"http:// is accepted only for a host listed by name in "
                         f"HITL_WEBHOOK_ALLOWED_HOSTS; use https:// for {host!r}")
    return url


def body(kwargs: Mapping[str, Any]) -> bytes:
    """The POST body: the exit message's keyword arguments (§2) as compact JSON, in the order
    they were written."""
    return json.dumps(dict(kwargs), separators=(",", ":"), ensure_ascii=False).encode()


def signature(raw_body: bytes, secret: str) -> str:
    """The ``Hitl-Signature`` header: ``sha256=`` and the hex HMAC-SHA256 of the raw body."""
    return "sha256=" + hmac.new(secret.encode(), raw_body, hashlib.sha256).hexdigest()


def headers(execution_id: str, raw_body: bytes, secret: str) -> dict[str, str]:
    return {"Content-Type": "application/json",
            "Hitl-Delivery": f"exit:{execution_id}",
            "Hitl-Signature": signature(raw_body, secret)}


def retry_delay_s(failures: int, *, base_s: float, max_s: float,
                  rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait after the ``failures``-th failed attempt: exponential (``base_s``,
    twice that, four times …, at most ``max_s``) with jitter (a random point in the upper
    half), so receivers coming back from an outage are not hit by every retry at once."""
    delay = min(max_s, base_s * float(2 ** min(max(failures - 1, 0), 40)))
    return delay * (0.5 + rand() / 2)
