"""Building requests for the acceptance tests."""

from __future__ import annotations

import uuid
from typing import Any


def request(team: str, reply_to: dict[str, str], *, execution_id: str | None = None,
            conversation_id: str | None = None, tags: list[str] | None = None,
            **settings: Any) -> dict[str, Any]:
    execution_id = execution_id or f"exec-{uuid.uuid4().hex[:12]}"
    return {
        "execution_id": execution_id,
        "conversation_id": conversation_id or f"conv-{uuid.uuid4().hex[:12]}",
        "flow_id": "flow-1",
        "step_id": "step-1",
        "conversation": {"tags": tags if tags is not None else [team],
                         "contact": {"id": "contact-1", "name": "Ada Lovelace"}},
        "settings": settings,
        "reply_to": reply_to,
    }
