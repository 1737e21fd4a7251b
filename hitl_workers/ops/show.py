"""An execution's whole story, for operators: ``hitl-workers show EXECUTION_ID``."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from hitl_workers.store import repo
from hitl_workers.store.tables import agent_events, offers, timers


def load(conn: Connection, execution_id: str) -> dict[str, Any] | None:
    row = repo.get_execution(conn, execution_id)
    if row is None:
        return None
    conversation = repo.get_conversation(conn, row.conversation_id) if row.conversation_id \
        else None
    return {
        "execution": dict(row._mapping),
        "conversation": dict(conversation._mapping) if conversation else None,
        "timers": [dict(r._mapping) for r in conn.execute(
            sa.select(timers).where(timers.c.execution_id == execution_id)
            .order_by(timers.c.due_at))],
        "offers": [dict(r._mapping) for r in conn.execute(
            sa.select(offers).where(offers.c.execution_id == execution_id)
            .order_by(offers.c.agent_id))],
        "audit": [dict(r._mapping) for r in repo.audit_trail(conn, execution_id)],
        "agent_events": [dict(r._mapping) for r in conn.execute(
            sa.select(agent_events).where(agent_events.c.execution_id == execution_id)
            .order_by(agent_events.c.created_at))],
        "outbox": [dict(r._mapping) for r in repo.outbox_for_execution(conn, execution_id)],
    }


def to_json(story: dict[str, Any]) -> str:
    return json.dumps(story, indent=2, default=_jsonable)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _t(value: datetime | None, origin: datetime) -> str:
    if value is None:
        return "-"
    offset = (value - origin).total_seconds()
    return f"{value:%H:%M:%S.%f}"[:-3] + f" (+{offset:.3f}s)"


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
        return text
    if kind == "exit_recorded":
        return f"exit recorded: {detail.get('exit')} {json.dumps(detail.get('merge_field'))}"
    if kind == "exit_delivered":
        return f"exit delivered to {detail.get('task')} on queue {detail.get('queue')}"
    if kind in ("claim_refused", "reject_refused", "close_refused"):
        return f"{kind.split('_')[0]} refused{who}: {detail.get('reason')}"
    if kind in ("timer_fired", "timeout_fired"):
        due, late = detail.get("due_at"), detail.get("late_ms")
        return f"{kind.replace('_', ' ')} (due {due}, {late} ms late)"
    rest = f" {json.dumps(detail)}" if detail else ""
    return f"{kind.replace('_', ' ')}{who}{rest}"


def format_text(story: dict[str, Any]) -> str:
    ex = story["execution"]
    origin = ex["requested_at"]
    lines = [
        f"execution   {ex['execution_id']}",
        f"conversation {ex['conversation_id']}  flow {ex['flow_id'] or '-'}  "
        f"step {ex['step_id'] or '-'}",
        f"state       {ex['state']}" + (f"  exit {ex['exit']} {json.dumps(ex['merge_field'])}"
                                        if ex["exit"] else ""),
        f"requested   {_t(origin, origin)}",
        f"ended       {_t(ex['ended_at'], origin)}",
        f"reply to    {ex['reply_task'] or '-'} on {ex['reply_queue'] or '-'}",
    ]
    if ex.get("errors"):
        lines.append("errors      " + "; ".join(
            f"{e['field']}: {e['message']}" for e in ex["errors"]))
    if story["conversation"]:
        conv = story["conversation"]
        lines.append(f"conversation now {conv['status']}, claimed by "
                     f"{', '.join(conv['claimed_by']) or 'nobody'}, tags {conv['tags']}")
    if story["timers"]:
        lines.append("timers")
        lines += [f"  {t['kind']:<10} due {_t(t['due_at'], origin)}  {t['state']}"
                  + (f" at {_t(t['fired_at'], origin)}" if t["fired_at"] else "")
                  for t in story["timers"]]
    if story["offers"]:
        lines.append("offers")
        lines += [f"  {o['agent_id']:<24} {o['status']}" for o in story["offers"]]
    lines.append("events")
    lines += [f"  {_t(e['at'], origin)}  {_describe(e)}" for e in story["audit"]]
    if story["outbox"]:
        lines.append("messages")
        for m in story["outbox"]:
            state = f"sent {_t(m['sent_at'], origin)}" if m["sent_at"] else \
                f"NOT SENT (attempts {m['attempts']}, last error {m['last_error'] or '-'})"
            lines.append(f"  {m['dedupe_key']:<40} {state}")
    return "\n".join(lines)
