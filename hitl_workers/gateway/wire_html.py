"""The gateway trusts no HTML on the wire: a notification's ``popup.html`` is sanitized again
just before it becomes an SSE frame (docs/contract.md §6 says what it may hold).

The workers render it from Markdown and clean it (:mod:`hitl_workers.notify.markdown`), but
anything that can write to an agent's Redis Stream could put any HTML there, and a
``<meta http-equiv=refresh>`` navigates the console away whatever its Content-Security-Policy
says. So the gateway runs the same allow-list again, here rather than in the browser: every
client of the event stream gets clean HTML, not only the reference console, and the policy is
the very one the workers apply (the same tag, attribute and URL lists), with no second
sanitizer in JavaScript to keep in step with it. It runs once per entry (the hub renders each
frame once for all of an agent's connections), and is idempotent on HTML it already cleaned.
"""

from __future__ import annotations

from typing import Any

from hitl_workers.notify.markdown import sanitize_html


def sanitize_notification(event: Any) -> Any:
    """``event`` with its ``popup.html`` cleaned (or emptied when it is not a string)."""
    if not isinstance(event, dict):
        return event
    popup = event.get("popup")
    if isinstance(popup, dict) and "html" in popup:
        html = popup["html"]
        event["popup"] = {**popup, "html": sanitize_html(html) if isinstance(html, str)
                          else ""}
    return event
