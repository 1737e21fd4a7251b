"""``hitl-workers show EXECUTION_ID``: one execution's whole story, as text or JSON.

The rows come from :mod:`hitl_workers.store.journal`; this module only prints them.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime
from typing import Any

from hitl_workers.store.journal import Journal


def to_json(story: Journal) -> str:
    return json.dumps(dataclasses.asdict(story), indent=2, default=_jsonable)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _t(value: datetime | None, origin: datetime) -> str:
    if value is None:
        return "-"
    offset = (value - origin).total_seconds()
    return f"{value:%H:%M:%S.%f}"[:-3] + f" (+{offset:.3f}s)"


MADE_BECAUSE = {
    "at_dispatch": "at dispatch",
    "directory_changed": "became eligible (directory changed)",
    "status_changed": "became eligible (status changed)",
    "slot_freed": "became eligible (a slot freed)",
    "became_eligible": "became eligible",
    "next_in_sequence": "next in sequence",
}

OTHERS_BECAUSE = {
    "not_eligible": "cannot see the conversation (not_eligible)",
    "not_the_specific_agent": "not the specific agent (not_the_specific_agent)",
}


def _round(detail: dict[str, Any]) -> str:
    """A sequential offer's round, when it has one (§9)."""
    return f" (round {detail['round']})" if detail.get("round") is not None else ""


def withdrawn_because(reason: str) -> str:
    """An ``offer_withdrawn`` reason in words (docs/contract.md §9)."""
    if reason.startswith("status_not_allowed:"):
        return f"status changed to {reason.split(':', 1)[1]}"
    return {"at_capacity": "at capacity", "agent_removed": "removed from the directory",
            "missed": "missed (its offer timeout passed)", "rejected": "rejected",
            "not_eligible": "no longer sees the conversation",
            "unknown_agent": "no longer in the directory"}.get(reason, reason)


def offer_history(story: Journal) -> dict[str, list[str]]:
    """Agent id → why each offer to it was made or withdrawn, in order (from the audit)."""
    history: dict[str, list[str]] = {}
    for event in story.audit:
        kind, detail, agent = event["kind"], event.get("detail") or {}, event.get("agent_id")
        if kind == "notified":
            for notified in detail.get("notified", []):
                history.setdefault(notified, []).append("made at dispatch")
        elif kind == "offered" and agent:
            reason = str(detail.get("reason"))
            told = history.setdefault(agent, [])
            if reason == "at_dispatch" and told[-1:] == ["made at dispatch"]:
                told.pop()  # a sequential first holder: its own entry says the round
            told.append("made: " + MADE_BECAUSE.get(reason, reason) + _round(detail))
        elif kind == "offer_withdrawn" and agent:
            history.setdefault(agent, []).append(
                "withdrawn: " + withdrawn_because(str(detail.get("reason"))))
        elif kind == "rejected" and detail.get("completed_by_withdrawal_from") \
                and not _withdrawn_at(story, detail["completed_by_withdrawal_from"], event):
            history.setdefault(detail["completed_by_withdrawal_from"], []).append(
                "withdrawn: " + withdrawn_because(str(detail.get("reason"))))
        elif kind == "rejected" and agent and not _withdrawn_at(story, agent, event):
            history.setdefault(agent, []).append("rejected")
        elif kind == "popup_closed" and agent:
            history.setdefault(agent, []).append("closed")
    return history


def _withdrawn_at(story: Journal, agent_id: str, event: dict[str, Any]) -> bool:
    """Whether ``agent_id``'s offer has its own ``offer_withdrawn`` entry written with
    ``event`` (a sequential hold passing on, §9): that entry tells it."""
    return any(e["kind"] == "offer_withdrawn" and e.get("agent_id") == agent_id
               and e["at"] == event["at"] for e in story.audit)


def _describe(event: dict[str, Any]) -> str:
    kind, detail, agent = event["kind"], event.get("detail") or {}, event.get("agent_id")
    who = f" by {agent}" if agent else ""
    if kind == "notified":
        skipped = detail.get("skipped") or {}
        notified = detail.get("notified", [])
        text = f"notified {len(notified)}: {', '.join(notified) or '-'}"
        if skipped:
            reasons = ", ".join(f"{a} ({r})" for a, r in skipped.items())
            more = detail.get("skipped_total", len(skipped)) - len(skipped)
            text += f"; skipped: {reasons}" + (f" and {more} more" if more > 0 else "")
        if detail.get("others"):
            # Dispatch never counts the directory (it asks only for who can see the
            # conversation), so the agents it does not name get one reason, not a number.
            others = str(detail["others"])
            text += f"; every other agent: {OTHERS_BECAUSE.get(others, others)}"
        return text
    if kind == "offered":
        reason = str(detail.get("reason"))
        expires = f", until {detail['expires_at']}" if detail.get("expires_at") else ""
        return f"offered to {agent}: {MADE_BECAUSE.get(reason, reason)}{_round(detail)}{expires}"
    if kind == "offer_missed":
        return f"offer missed by {agent}: its status set to {detail.get('on_missed')}" \
            if detail.get("on_missed") not in (None, "keep") else f"offer missed by {agent}"
    if kind == "offer_withdrawn":
        return f"offer withdrawn from {agent}: {withdrawn_because(str(detail.get('reason')))}"
    if kind == "exit_recorded":
        return f"exit recorded: {detail.get('exit')} {json.dumps(detail.get('merge_field'))}"
    if kind.startswith("webhook_") or (kind == "exit_delivered" and detail.get("webhook")):
        return _describe_webhook(kind, detail)
    if kind == "exit_delivered":
        return f"exit delivered to {detail.get('task')} on queue {detail.get('queue')}"
    if kind in ("claim_refused", "reject_refused", "close_refused"):
        return f"{kind.split('_')[0]} refused{who}: {detail.get('reason')}"
    if kind in ("timer_fired", "timeout_fired"):
        due, late = detail.get("due_at"), detail.get("late_ms")
        return f"{kind.replace('_', ' ')} (due {due}, {late} ms late)"
    rest = f" {json.dumps(detail)}" if detail else ""
    return f"{kind.replace('_', ' ')}{who}{rest}"


def _describe_webhook(kind: str, detail: dict[str, Any]) -> str:
    """A webhook exit's delivery events (docs/contract.md §10)."""
    if kind == "exit_delivered":
        return (f"exit delivered to webhook {detail.get('webhook')} "
                f"(attempt {detail.get('attempts')})")
    if kind == "webhook_attempt":
        return f"webhook attempt {detail.get('attempt')}: POST {detail.get('url')}"
    if kind in ("webhook_answered", "webhook_failed"):
        how = (f"HTTP {detail.get('status')}" if detail.get("status") is not None
               else detail.get("error"))
        retry = (f"; next attempt {detail['next_attempt_at']}"
                 if detail.get("next_attempt_at") else "")
        return (f"webhook attempt {detail.get('attempt')} "
                f"{'answered' if kind == 'webhook_answered' else 'failed'}: {how} "
                f"in {detail.get('elapsed_ms')} ms{retry}")
    if kind == "webhook_gave_up":
        return (f"webhook exit given up after {detail.get('attempts')} attempts: "
                f"{detail.get('reason')}")
    return f"{kind.replace('_', ' ')} {json.dumps(detail)}"


def format_text(story: Journal) -> str:
    ex = story.execution
    origin = ex["requested_at"]
    lines = [
        f"execution   {ex['execution_id']}",
        f"conversation {ex['conversation_id']}  flow {ex['flow_id'] or '-'}  "
        f"step {ex['step_id'] or '-'}",
        f"state       {ex['state']}" + (f"  exit {ex['exit']} {json.dumps(ex['merge_field'])}"
                                        if ex["exit"] else ""),
        f"requested   {_t(origin, origin)}",
        f"ended       {_t(ex['ended_at'], origin)}",
        f"reply to    webhook {ex['reply_webhook']}" if ex.get("reply_webhook") else
        f"reply to    {ex['reply_task'] or '-'} on {ex['reply_queue'] or '-'}",
    ]
    if ex.get("errors"):
        lines.append("errors      " + "; ".join(
            f"{e['field']}: {e['message']}" for e in ex["errors"]))
    if story.conversation:
        conv = story.conversation
        lines.append(f"conversation now {conv['status']}, claimed by "
                     f"{', '.join(conv['claimed_by']) or 'nobody'}, tags {conv['tags']}")
    if story.timers:
        lines.append("timers")
        lines += [f"  {t['kind']:<10} due {_t(t['due_at'], origin)}  {t['state']}"
                  + (f" at {_t(t['fired_at'], origin)}" if t["fired_at"] else "")
                  for t in story.timers]
    if story.offers:
        lines.append("offers (why each was made, missed or withdrawn)")
        history = offer_history(story)
        lines += [f"  {o['agent_id']:<24} {o['status']:<10} "
                  f"{'; '.join(history.get(o['agent_id'], [])) or '-'}" for o in story.offers]
    lines.append("events")
    lines += [f"  {_t(e['at'], origin)}  {_describe(e)}" for e in story.audit]
    if story.outbox:
        lines.append("messages")
        for m in story.outbox:
            state = f"sent {_t(m['sent_at'], origin)}" if m["sent_at"] else \
                f"NOT SENT (attempts {m['attempts']}, last error {m['last_error'] or '-'})"
            if m["sent_at"] and m.get("last_error"):
                state += f" ({m['last_error']})"  # superseded, or a webhook given up
            elif not m["sent_at"] and m.get("next_attempt_at"):
                state += f", next attempt {_t(m['next_attempt_at'], origin)}"
            lines.append(f"  {m['dedupe_key']:<40} {state}")
    return "\n".join(lines)
