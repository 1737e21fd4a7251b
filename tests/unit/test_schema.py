"""The shipped JSON Schemas (docs/schema/) are what ``hitl-workers schema`` generates from the
models the workers validate with, and they say what docs/contract.md says.

Real messages are checked against them where real clients receive them (tests/clients).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from jsonschema import Draft202012Validator

from hitl_workers import schema
from hitl_workers.cli import main
from tests.support.schemas import SCHEMA_DIR, assert_conforms, problems

REQUEST = {  # docs/contract.md §1's example
    "execution_id": "flow-42:step-7:run-1", "conversation_id": "conv-9",
    "flow_id": "flow-42", "step_id": "step-7",
    "conversation": {"tags": ["channel:sms", "team:billing"],
                     "contact": {"id": "contact-1", "name": "Ada Lovelace", "phone": "+1555"}},
    "settings": {
        "allow_busy": False, "allow_offline": False, "specific_agent_id": None,
        "browser_notification": True,
        "popup": {"text": "**VIP** customer asks about a *refund*",
                  "buttons": {"claim": {"label": "Take it"}, "close": {"enabled": False}},
                  "display_for": "30s", "timer": {"auto_action_timeout": "10s"},
                  "additional_timers": [{"label": "In queue", "since": 1764000000}]},
        "timeout": "5m", "reject_policy": "any"},
    "reply_to": {"task": "flow.step_exited", "queue": "flow"},
}
EXIT = {"execution_id": "flow-42:step-7:run-1", "conversation_id": "conv-9",
        "flow_id": "flow-42", "step_id": "step-7", "exit": "claimed",
        "merge_field": {"addClaimedBy": "agent-7"},
        "exited_at": "2026-11-24T10:15:02.123456+00:00"}


def test_the_shipped_schemas_are_what_the_command_generates() -> None:
    generated = schema.generate()
    shipped = {p.name: p.read_text(encoding="utf-8") for p in SCHEMA_DIR.glob("*.json")}
    stale = sorted(name for name in generated.keys() | shipped.keys()
                   if generated.get(name) != shipped.get(name))
    assert not stale, (f"docs/schema/ is out of date for {stale}: run "
                       f"`hitl-workers schema --out docs/schema` and commit the result")


def test_the_command_writes_every_schema(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["schema", "--out", str(tmp_path / "schema")])

    assert result.exit_code == 0, result.output
    written = {p.name: p.read_text(encoding="utf-8") for p in (tmp_path / "schema").iterdir()}
    assert written == schema.generate()
    index = json.loads(written["index.json"])
    assert {entry["section"] for entry in index.values()} == {"§1", "§2", "§3", "§4", "§5", "§6",
                                                              "§9"}


@pytest.mark.parametrize("file", sorted(schema.generate()))
def test_each_schema_is_valid_json_schema(file: str) -> None:
    Draft202012Validator.check_schema(json.loads(schema.generate()[file]))


def test_a_request_as_documented_fits_and_a_misspelt_setting_does_not() -> None:
    assert_conforms("hitl.request_assistance.json", REQUEST)
    assert_conforms("hitl.request_assistance.json", {"execution_id": "e", "conversation_id": "c"})
    misspelt = copy.deepcopy(REQUEST)
    misspelt["settings"]["time_out"] = "5m"
    assert problems("hitl.request_assistance.json", misspelt)
    assert problems("hitl.request_assistance.json", {**REQUEST, "execution_id": "a b"})


@pytest.mark.parametrize(("exit", "merge_field"), [
    ("claimed", {"addClaimedBy": "agent-7"}),
    ("not_claimed", {"reason": "NO_AGENTS"}),
    ("not_claimed", {"reason": "NOT_AVAILABLE"}),
    ("not_claimed", {"reason": "REJECTED", "rejectedBy": ["agent-1", "agent-2"]}),
    ("timer_action", {}),
    ("timeout", {}),
    ("error", {"error": {"code": "invalid_request", "message": "settings.timeout: too long",
                         "fields": ["settings.timeout"]}}),
])
def test_every_documented_exit_fits(exit: str, merge_field: dict[str, Any]) -> None:
    assert_conforms("exit.json", {**EXIT, "exit": exit, "merge_field": merge_field})


@pytest.mark.parametrize(("exit", "merge_field"), [
    ("claimed", {"reason": "NO_AGENTS"}),
    ("timeout", {"addClaimedBy": "agent-7"}),
    ("not_claimed", {"reason": "REJECTED"}),
    ("escalated", {}),
])
def test_an_exit_with_the_wrong_merge_field_does_not(exit: str, merge_field: Any) -> None:
    assert problems("exit.json", {**EXIT, "exit": exit, "merge_field": merge_field})


def test_the_agent_event_and_directory_messages() -> None:
    assert_conforms("hitl.claim.json", {"execution_id": "e-1", "agent_id": "a-1",
                                        "event_id": "click-1"})
    assert problems("hitl.claim.json", {"execution_id": "e-1", "agent_id": "a-1", "extra": 1})
    assert_conforms("agent_event.result.json", {
        "outcome": "claimed", "execution_id": "e-1", "state": "exited", "exit": "claimed",
        "merge_field": {"addClaimedBy": "a-1"}})
    assert problems("agent_event.result.json", {
        "outcome": "won", "execution_id": "e-1", "state": "exited", "exit": "claimed",
        "merge_field": None})
    assert_conforms("hitl.upsert_agent.json", {"agent_id": "a-1", "name": "Ada",
                                               "status": "available",
                                               "rule_groups": [["team:billing"], []]})
    assert_conforms("directory.result.json", {"agent_id": "a-1", "status": "removed"})
    assert_conforms("hitl.cancel.json", {"execution_id": "e-1", "reason": "user left"})
