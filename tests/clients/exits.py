"""What every client test expects of the seven cases it plays (one per exit)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

ExitOf = Callable[[str], tuple[str, Any]]


def assert_each_case_left_by_its_exit(exit_of: ExitOf, *, claimer: str, rejecter: str) -> None:
    """``exit_of(case)`` is ``(exit, merge_field)`` of the exit message the case got."""
    assert exit_of("claim") == ("claimed", {"addClaimedBy": claimer})
    assert exit_of("none") == ("not_claimed", {"reason": "NO_AGENTS"})
    assert exit_of("busy") == ("not_claimed", {"reason": "NOT_AVAILABLE"})
    assert exit_of("reject") == ("not_claimed", {"reason": "REJECTED", "rejectedBy": [rejecter]})
    assert exit_of("timer") == ("timer_action", {})
    assert exit_of("timeout") == ("timeout", {})
    kind, merge_field = exit_of("error")
    assert kind == "error"
    assert merge_field["error"]["code"] == "invalid_request"
    assert merge_field["error"]["fields"] == ["settings.timeout"]
