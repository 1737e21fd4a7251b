"""The signing secret (docs/contract.md §8 "Limits"): the gateway and ``hitl-workers token`` refuse
an unset, short or placeholder ``HITL_SECRET`` and say how to make one; tokens allow a few
seconds of clock skew."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from hitl_workers.gateway.tokens import InvalidToken, check_token, make_token
from hitl_workers.settings import Settings
from tests.gateway.harness import cli, env_without, free_port

WEAK = {
    "unset": None,
    "empty": "",
    "short": "s3cr3t-but-only-20ch",
    "old default": "dev-insecure-secret-change-me",
    "sample placeholder": "change-me-to-a-long-random-string",
    "compose placeholder": "change-me",
    "not random": "a" * 40,
}


def _env(secret: str | None) -> dict[str, str]:
    env = env_without("HITL_SECRET")
    if secret is not None:
        env["HITL_SECRET"] = secret
    return env


@pytest.mark.parametrize("secret", WEAK.values(), ids=WEAK.keys())
def test_the_gateway_refuses_to_start_on_a_weak_secret(secret):
    done = subprocess.run([*cli(), "gateway", "--port", str(free_port())], env=_env(secret),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "HITL_SECRET" in done.stderr
    assert "secrets.token_urlsafe(32)" in done.stderr  # it says how to make one
    assert "agent console:" not in done.stderr  # it never got to listen


@pytest.mark.parametrize("secret", WEAK.values(), ids=WEAK.keys())
def test_the_token_command_refuses_a_weak_secret(secret):
    done = subprocess.run([*cli(), "token", "agent-7"], env=_env(secret),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert done.stdout == ""
    assert "secrets.token_urlsafe(32)" in done.stderr


def test_a_few_seconds_of_clock_skew_are_allowed_and_no_more():
    settings = Settings(secret="tests-only-Zq7mW2xK9pL4vN8rT3yB6cF1hJ5dG0sA",
                        token_max_age_s=60, token_clock_leeway_s=5)
    token = make_token("agent-7", settings)
    now = time.time()
    # issued by a gateway whose clock is 3 s ahead of this one: accepted
    assert check_token(token, settings, now=now - 3).agent_id == "agent-7"
    with pytest.raises(InvalidToken, match="future"):
        check_token(token, settings, now=now - 10)
    # just past max age, within the leeway: accepted; past both: refused
    assert check_token(token, settings, now=now + 63).agent_id == "agent-7"
    with pytest.raises(InvalidToken, match="expired"):
        check_token(token, settings, now=now + 67)
    assert check_token(token, settings, now=now).expires_at == pytest.approx(
        int(now) + 65, abs=1)


def test_the_dev_runner_makes_a_secret_per_run_when_none_is_usable(monkeypatch):
    from hitl_workers.gateway.tokens import secret_problem
    from hitl_workers.ops.run import with_run_secret

    monkeypatch.delenv("HITL_SECRET", raising=False)
    said: list[str] = []
    first = with_run_secret(Settings(), said.append)
    assert secret_problem(first) is None
    assert os.environ["HITL_SECRET"] == first.secret  # the processes it starts share it
    assert "random one for this run" in said[0]
    monkeypatch.delenv("HITL_SECRET")
    assert with_run_secret(Settings(), said.append).secret != first.secret  # per run
    # a strong secret that is set is kept
    strong = Settings(secret="tests-only-Zq7mW2xK9pL4vN8rT3yB6cF1hJ5dG0sA")
    assert with_run_secret(strong, said.append) is strong
