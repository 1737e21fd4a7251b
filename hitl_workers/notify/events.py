"""The notifications agents receive on their Redis Stream (docs/contract.md §6)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from hitl_workers.clock import to_ms
from hitl_workers.domain.request import AssistanceRequest
from hitl_workers.notify.markdown import render_markdown


def requested(request: AssistanceRequest, *, contact: Any, dispatched_at: datetime,
              countdown_at: datetime | None, display_until: datetime | None,
              offer: dict[str, Any] | None = None) -> dict[str, Any]:
    """``offer``: the sequential offer's round and expiry (§9); None (broadcast): no field."""
    settings = request.settings
    popup = None
    if settings.popup is not None:
        popup = {
            "text": settings.popup.text,
            "html": render_markdown(settings.popup.text),
            "buttons": [{"action": action, "label": label}
                        for action, label in settings.popup.buttons.enabled()],
            "display_until_ms": to_ms(display_until) if display_until else None,
            "countdown_until_ms": to_ms(countdown_at) if countdown_at else None,
            "timers": [{"label": t.label, "since_ms": t.since_ms}
                       for t in settings.popup.additional_timers],
        }
    event = {
        "type": "assistance.requested",
        "id": f"requested:{request.execution_id}",
        "execution_id": request.execution_id,
        "conversation_id": request.conversation_id,
        "contact": contact,
        "browser_notification": settings.browser_notification,
        "dispatched_at_ms": to_ms(dispatched_at),
        "popup": popup,
    }
    if offer is not None:
        event["offer"] = offer
    return event


def withdrawn(*, execution_id: str, conversation_id: str | None, state: str,
              exit: str | None, claimed_by: str | None, suffix: str = "") -> dict[str, Any]:
    return {
        "type": "assistance.withdrawn",
        "id": f"withdrawn:{execution_id}{suffix}",
        "execution_id": execution_id,
        "conversation_id": conversation_id,
        "state": state,
        "exit": exit,
        "claimed_by": claimed_by,
    }
