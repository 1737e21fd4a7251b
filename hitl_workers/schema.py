"""``hitl-workers schema``: a JSON Schema per message of the contract (docs/contract.md §1–§6).

Generated from the models the workers validate with — the request's (``domain/request.py``), the
other tasks' ``*In`` models, and ``domain/messages.py`` for what the system sends — so the
schemas cannot say something the workers do not do. ``docs/schema/`` holds the output;
tests/unit/test_schema.py fails when it drifts from what this generates.

A schema says the shape; a few rules need more than a shape and are only in docs/contract.md:
the time strings' grammar and ranges, the 16 KiB ``contact`` and the 256 KiB request, the
nesting limit. §9 (routing: ``capacity``, ``settings.offer``, ``settings.priority``,
``hitl.release``) is not built yet, so it has no schema.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

DIALECT = "https://json-schema.org/draft/2020-12/schema"


@dataclass(frozen=True)
class Message:
    file: str
    section: str
    model: type[BaseModel]
    title: str
    description: str


def messages() -> list[Message]:
    """Every message of the contract, in the order of docs/contract.md."""
    from hitl_workers.domain import messages as out
    from hitl_workers.domain.request import AssistanceRequest
    from hitl_workers.services.agent_events import AgentEventIn, CancelIn
    from hitl_workers.services.agents import (
        ReleaseIn,
        RemoveAgentIn,
        SetStatusIn,
        UpsertAgentIn,
    )

    event = ("The keyword arguments of `{task}` (queue `hitl.events`): give exactly one of "
             "`execution_id` and `conversation_id`.")
    return [
        Message("hitl.request_assistance.json", "§1", AssistanceRequest,
                "hitl.request_assistance", "The keyword arguments of `hitl.request_assistance` "
                "(queue `hitl.requests`): the request that starts a step execution."),
        Message("hitl.request_assistance.result.json", "§1", out.RequestResult,
                "hitl.request_assistance result", out.RequestResult.__doc__ or ""),
        Message("exit.json", "§2", out.ExitMessage, "exit message",
                "The keyword arguments of the exit message, a task named `reply_to.task` on "
                "queue `reply_to.queue`, task id `exit:<execution_id>`; for a `reply_to.webhook`, "
                "the JSON body POSTed there (§10)."),
        *[Message(f"hitl.{action}.json", "§3", AgentEventIn, f"hitl.{action}",
                  event.format(task=f"hitl.{action}")) for action in ("claim", "reject", "close")],
        Message("agent_event.result.json", "§3", out.EventResult, "agent event result",
                "The result of `hitl.claim`, `hitl.reject` and `hitl.close`."),
        Message("hitl.cancel.json", "§4", CancelIn, "hitl.cancel",
                "The keyword arguments of `hitl.cancel` (queue `hitl.requests`)."),
        Message("hitl.cancel.result.json", "§4", out.EventResult, "hitl.cancel result",
                "The result of `hitl.cancel`: outcome `cancelled`, `already_resolved`, "
                "`not_found` (or `invalid`)."),
        Message("hitl.upsert_agent.json", "§5", UpsertAgentIn, "hitl.upsert_agent",
                "The keyword arguments of `hitl.upsert_agent` (queue `hitl.requests`)."),
        Message("hitl.set_agent_status.json", "§5", SetStatusIn, "hitl.set_agent_status",
                "The keyword arguments of `hitl.set_agent_status` (queue `hitl.requests`)."),
        Message("hitl.remove_agent.json", "§5", RemoveAgentIn, "hitl.remove_agent",
                "The keyword arguments of `hitl.remove_agent` (queue `hitl.requests`)."),
        Message("directory.result.json", "§5", out.DirectoryResult, "agent directory result",
                out.DirectoryResult.__doc__ or ""),
        Message("hitl.release.json", "§9", ReleaseIn, "hitl.release",
                "The keyword arguments of `hitl.release` (queue `hitl.requests`): take the "
                "agent (null: every agent) out of the conversation's `claimed_by`."),
        Message("hitl.release.result.json", "§9", out.ReleaseResult, "hitl.release result",
                out.ReleaseResult.__doc__ or ""),
        Message("notification.json", "§6", out.Notification, "agent notification",
                out.Notification.__doc__ or ""),
        Message("assistance.requested.json", "§6", out.AssistanceRequested,
                "assistance.requested", "A step an agent may claim, with its popup."),
        Message("assistance.withdrawn.json", "§6", out.AssistanceWithdrawn,
                "assistance.withdrawn", "A step that ended, or that goes on without this agent."),
    ]


def schema_for(message: Message) -> dict[str, Any]:
    generated = message.model.model_json_schema(mode="validation")
    description = " ".join(message.description.split())
    return {
        "$schema": DIALECT,
        "$id": message.file,
        "title": message.title,
        "description": f"docs/contract.md {message.section}. {description}",
        **{k: v for k, v in generated.items() if k not in ("title", "description")},
    }


def render(schema: dict[str, Any]) -> str:
    """The file's text: stable key order and indentation, so a diff shows a real change."""
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def generate() -> dict[str, str]:
    """File name → file text, for every message, plus ``index.json`` (file → section, title)."""
    files = {m.file: render(schema_for(m)) for m in messages()}
    files["index.json"] = render({m.file: {"section": m.section, "title": m.title}
                                  for m in messages()})
    return files


def write(out_dir: Path) -> list[Path]:
    """Write every schema into ``out_dir`` (created if missing); the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in generate().items():
        path = out_dir / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
