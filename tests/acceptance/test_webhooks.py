"""Webhook exits (docs/contract.md §10) with the session's real workers and a real HTTP
receiver in the test process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support.steps import audit_trail, eventually, execution, outbox_rows, request, stays
from tests.support.webhook_receiver import Receiver

SECRET = os.environ["HITL_WEBHOOK_SECRET"]


@pytest.fixture
def receiver():
    with Receiver(SECRET) as running:
        yield running


def kinds(execution_id: str, prefix: str = "webhook_") -> list[str]:
    return [e.kind for e in audit_trail(execution_id) if e.kind.startswith(prefix)]


def test_a_claim_is_posted_to_the_webhook_signed_and_audited(client, agents, team, receiver):
    # Given a step whose reply_to is a webhook, and an agent of its team
    agent = agents()
    step = request(team, {"webhook": receiver.url()})
    assert client.call("hitl.request_assistance", **step)["state"] == "waiting"
    # When the agent claims
    assert client.call("hitl.claim", execution_id=step["execution_id"],
                       agent_id=agent)["outcome"] == "claimed"
    # Then the exit message's keyword arguments arrive, signed, under Hitl-Delivery
    exit_kwargs = receiver.wait_for(step["execution_id"])
    assert exit_kwargs["exit"] == "claimed"
    assert exit_kwargs["merge_field"] == {"addClaimedBy": agent}
    assert set(exit_kwargs) == {"execution_id", "conversation_id", "flow_id", "step_id",
                                "exit", "merge_field", "exited_at"}
    (post,) = receiver.posts
    assert post.signature_ok and post.headers["Hitl-Delivery"] == f"exit:{step['execution_id']}"
    assert post.headers["Content-Type"] == "application/json"
    # and the attempt is in the audit trail, the row sent
    assert eventually(lambda: kinds(step["execution_id"]) == [
        "webhook_attempt", "webhook_answered"])
    delivered = [e for e in audit_trail(step["execution_id"]) if e.kind == "exit_delivered"]
    assert [e.detail for e in delivered] == [{"webhook": receiver.url(), "attempts": 1}]
    (row,) = outbox_rows(step["execution_id"], "exit")
    assert row.sent_at is not None and row.attempts == 1
    assert execution(step["execution_id"]).reply_webhook == receiver.url()


def test_a_500_then_a_200_is_delivered_once_after_one_retry(client, team):
    # Given a receiver that answers the first POST with 500, every later one with 200
    with Receiver(SECRET, answer=lambda n: 500 if n == 1 else 200) as receiver:
        # When a step exits at once (nobody of its team: NO_AGENTS)
        step = request(team, {"webhook": receiver.url()})
        assert client.call("hitl.request_assistance", **step)["exit"] == "not_claimed"
        # Then the flow engine's logic gets it exactly once, after one retry
        assert receiver.wait_for(step["execution_id"])["merge_field"] == {
            "reason": "NO_AGENTS"}
        assert stays(lambda: len(receiver.posts) == 2, 3.0)
        assert receiver.handed_to_logic == 1
        assert [p.answered for p in receiver.posts] == [500, 200]
        assert all(p.signature_ok for p in receiver.posts)
        # and both attempts are in the audit trail
        assert eventually(lambda: kinds(step["execution_id"]) == [
            "webhook_attempt", "webhook_failed", "webhook_attempt", "webhook_answered"])
        failed = next(e for e in audit_trail(step["execution_id"])
                      if e.kind == "webhook_failed")
        assert failed.detail["status"] == 500 and failed.detail["next_attempt_at"]
        # and `hitl-workers show` tells the story
        shown = subprocess.run([sys.executable, "-m", "hitl_workers.cli", "show",
                                step["execution_id"]], capture_output=True, text=True,
                               timeout=60, check=True).stdout
        assert "webhook attempt 1 failed: HTTP 500" in shown
        assert "webhook attempt 2 answered: HTTP 200" in shown
        assert f"reply to    webhook {receiver.url()}" in shown


def test_a_receiver_down_at_first_gets_the_exit_after_backoff(client, team):
    # Given a receiver that is not listening yet
    receiver = Receiver(SECRET)
    step = request(team, {"webhook": receiver.url()})
    assert client.call("hitl.request_assistance", **step)["exit"] == "not_claimed"
    # When the first attempts are refused
    assert eventually(lambda: kinds(step["execution_id"]).count("webhook_failed") >= 1, 15)
    refused = next(e for e in audit_trail(step["execution_id"]) if e.kind == "webhook_failed")
    assert refused.detail["status"] is None and "Connect" in refused.detail["error"]
    # and the receiver starts later
    with receiver:
        # Then the exit arrives, once
        assert receiver.wait_for(step["execution_id"])["exit"] == "not_claimed"
        assert stays(lambda: receiver.handed_to_logic == 1, 2.0)
    attempts = kinds(step["execution_id"])
    assert attempts[-2:] == ["webhook_attempt", "webhook_answered"]
    assert attempts.count("webhook_attempt") >= 2


def test_a_host_not_allowed_fails_validation_with_no_exit(client, team):
    # Given a request whose webhook host is not in HITL_WEBHOOK_ALLOWED_HOSTS
    step = request(team, {"webhook": "https://hooks.example.com/exit"})
    answer = client.call("hitl.request_assistance", **step)
    # Then it is recorded failed, naming reply_to.webhook, and no exit goes anywhere
    assert (answer["state"], answer["exit"]) == ("failed", "error")
    row = execution(step["execution_id"])
    assert [e["field"] for e in row.errors] == ["reply_to.webhook"]
    assert "not allowed" in row.errors[0]["message"]
    assert row.reply_webhook is None and row.reply_task is None
    assert outbox_rows(step["execution_id"], "exit") == []
