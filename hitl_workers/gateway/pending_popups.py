"""The popup of each request still waiting when a console opens (issue 11.7).

The bell list comes from the database, which has no popup: the popup is what the worker put
in the agent's notification. So for a console that asks (``?with_popups=true``, once, when
its page opens), the gateway looks for each listed execution's newest
``assistance.requested`` in the agent's stream, newest first, reading at most
``SCAN_LIMIT`` entries, and hands it back (sanitized, like every frame) beside the entry.
"""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as aioredis

from hitl_workers.gateway.wire_html import sanitize_notification
from hitl_workers.notify.streams import stream_key

SCAN_LIMIT = 1000
PAGE = 200


async def latest_requests(client: aioredis.Redis, agent_id: str,
                          execution_ids: set[str]) -> dict[str, dict[str, Any]]:
    """execution id → its newest ``assistance.requested`` notification in the agent's stream,
    for those of ``execution_ids`` found within the newest ``SCAN_LIMIT`` entries."""
    found: dict[str, dict[str, Any]] = {}
    upper, scanned = "+", 0
    while execution_ids - found.keys() and scanned < SCAN_LIMIT:
        page = await client.xrevrange(stream_key(agent_id), max=upper, count=PAGE)
        if not page:
            break
        for _entry_id, fields in page:
            try:
                event = json.loads((fields or {}).get("event", ""))
            except ValueError:
                continue
            if (isinstance(event, dict) and event.get("type") == "assistance.requested"
                    and event.get("execution_id") in execution_ids
                    and event["execution_id"] not in found):
                found[event["execution_id"]] = sanitize_notification(event)
        scanned += len(page)
        upper = "(" + str(page[-1][0])  # exclusive: the entries before the oldest seen
    return found
