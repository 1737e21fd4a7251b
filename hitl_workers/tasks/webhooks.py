"""``hitl.deliver_webhook`` (queue ``hitl.webhooks``): one attempt at a webhook exit
(docs/contract.md §10, :mod:`hitl_workers.services.webhooks`).

A queue and a worker pool of their own: a receiver that takes its full 10 seconds to answer
holds a slot of this pool only, never one that claims, wake-ups or Celery exits need.
"""

from __future__ import annotations

import logging
import time

import httpx

from hitl_workers.app import app
from hitl_workers.clock import utcnow
from hitl_workers.observe import metrics
from hitl_workers.services import webhooks
from hitl_workers.settings import get_settings
from hitl_workers.tasks.guard import GuardedTask

log = logging.getLogger(__name__)

_client: httpx.Client | None = None


def _http() -> httpx.Client:
    # One client per process (connections kept alive to receivers that answer often).
    # Redirects are not followed: a 3xx is not a 2xx, so it is retried like any failure (and
    # a redirect could lead past HITL_WEBHOOK_ALLOWED_HOSTS). HTTPS_PROXY / NO_PROXY from the
    # environment are honoured, for workers whose egress goes through a proxy.
    global _client
    if _client is None:
        _client = httpx.Client(timeout=httpx.Timeout(webhooks.TIMEOUT_S),
                               follow_redirects=False)
    return _client


def post(url: str, body: bytes, headers: dict[str, str]) -> webhooks.Answer:
    started = time.monotonic()
    try:
        response = _http().post(url, content=body, headers=headers)
        status, error = response.status_code, None
    except httpx.TimeoutException as exc:
        status, error = None, f"timed out after {webhooks.TIMEOUT_S:g} s ({type(exc).__name__})"
    except httpx.HTTPError as exc:  # refused, reset, DNS, TLS, …: retried like a 5xx
        status, error = None, f"{type(exc).__name__}: {exc}"[:500]
    return webhooks.Answer(status, error, int((time.monotonic() - started) * 1000))


@app.task(name="hitl.deliver_webhook", base=GuardedTask, ignore_result=True)
def deliver_webhook(*, id: int) -> str:
    """One attempt at outbox row ``id``. Never retried by Celery: a failed attempt is
    scheduled in the row (``next_attempt_at``) and the reconciler hands it back when due,
    so retries survive restarts and keep their backoff."""
    settings = get_settings()
    config = webhooks.Config(settings.webhook_secret, settings.webhook_retry_base_s,
                             settings.webhook_retry_max_s, settings.webhook_give_up_s)
    return webhooks.deliver(id, post, utcnow, config, count=metrics.count_webhook_attempt)
