"""Scale-out: three worker hosts share one PostgreSQL and one Redis, under load (docs/scaling.md
§10).

The three workers (``worker@host-a``, ``worker@host-b``, ``worker@host-c``, three pool processes
each, all four queues) run as three hosts: each in a network namespace of its own, with its own
address, loopback and host name, reaching PostgreSQL and Redis only across a virtual network
(tests/scaleout/netns.py). Where the machine cannot make namespaces (not root, no iproute2) they
run as three processes on this host instead; the test prints which (``mode``), and so does
``summary.json`` beside the worker logs.

Given the three workers and beat,
When 300 steps are requested and claimed concurrently by 24 client threads — two agents race
  for each step, and every tenth step is left to its 2 s timeout — and 40% of the way
  through host-b's worker is killed (``kill -9`` of its process group), then started again by
  its "supervisor" once the Redis visibility timeout has passed (8 s here, so the test need not
  wait the production 3 minutes),
Then every request and every claim is answered: the messages the killed worker held are
  redelivered to a live worker once it is back;
  each step has exactly one winning claim;
  every execution has exactly one exit in the database and at least one exit message, every
  copy identical (the contract allows a repeated message, never a different one);
  and the work was spread over all three nodes.

The clients do what the contract asks of them: a request or claim left unanswered for 15 s is
sent again with the same ``execution_id`` / ``event_id``, and answered idempotently. On Redis
this is not optional: a message on its way to a worker at the instant the worker dies can be
lost outright, because the worker pops it from the queue (BRPOP) before it records it as
unacknowledged (celery/celery#7950). The test counts such retries and whether the original
turned up later (``client_retries`` in summary.json); none may go unanswered.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from celery.exceptions import TimeoutError as CeleryTimeout

from hitl_workers.store import repo
from hitl_workers.store.db import make_engine
from tests.scaleout.conftest import HOSTS, VISIBILITY_TIMEOUT_S
from tests.support.steps import request

pytestmark = pytest.mark.slow

STEPS = 300
UNCLAIMED_EVERY = 10  # these steps wait for their timeout instead of a claim
CLIENTS = 24
AGENTS = 3
RESULT_TIMEOUT = 60.0
ANSWER_WAIT_S = 15.0  # then the client sends the same request or claim again
ATTEMPTS = 4
KILLED = "host-b"

RECEIVED = re.compile(r"Task (hitl\.\w+)\[([^\]]+)\] received")
SUCCEEDED = re.compile(r"Task (hitl\.\w+)\[([^\]]+)\] succeeded")
# A wake-up whose deadline the reconciler fired while the dead worker held it is revoked, and
# dropped when it comes back: it is finished too.
DISCARDED = re.compile(r"Discarding revoked task: (hitl\.\w+)\[([^\]]+)\]")


def _tasks(text: str, pattern: re.Pattern[str], name: str | None = None) -> set[str]:
    return {task_id for task, task_id in pattern.findall(text) if name in (None, task)}


def _finished(text: str) -> set[str]:
    return _tasks(text, SUCCEEDED) | _tasks(text, DISCARDED)


def _names(text: str, task_ids: set[str]) -> dict[str, int]:
    return dict(Counter(task for task, task_id in set(RECEIVED.findall(text))
                        if task_id in task_ids))


def test_three_hosts_share_the_load_and_a_killed_one_loses_nothing(scale, scale_flow):
    app = scale.app
    token = uuid.uuid4().hex[:8]
    team = f"team:scale-{token}"
    crowd = [f"agent-scale-{token}-{i}" for i in range(AGENTS)]
    for agent in crowd:
        app.send_task("hitl.upsert_agent", kwargs={
            "agent_id": agent, "name": agent, "status": "available",
            "rule_groups": [[team]]}).get(timeout=RESULT_TIMEOUT)

    done = Counter[str]()
    retried: list[dict[str, str]] = []
    lock = threading.Lock()

    def ask(first: Any, task: str, kwargs: dict[str, Any], what: str) -> tuple[str, Any]:
        """Wait for the answer; without one in time, send the same message again."""
        attempt = first
        for _ in range(ATTEMPTS):
            try:
                return attempt.id, attempt.get(timeout=ANSWER_WAIT_S)
            except CeleryTimeout:
                with lock:
                    retried.append({"what": what, "unanswered": attempt.id})
                attempt = app.send_task(task, kwargs=kwargs)
        raise AssertionError(f"{what}: no answer after {ATTEMPTS} attempts [{first.id}]")

    def one_step(index: int) -> dict[str, Any]:
        eid = f"scale-{token}-{index:04d}"
        unclaimed = index % UNCLAIMED_EVERY == 0
        step = request(team, scale_flow.reply_to, execution_id=eid,
                       **({"timeout": "2s"} if unclaimed else {}))
        _id, started = ask(app.send_task("hitl.request_assistance", kwargs=step),
                           "hitl.request_assistance", step, f"request {eid}")
        claims: list[tuple[str, str, dict[str, Any]]] = []
        if not unclaimed:
            racers = [(agent, {"execution_id": eid, "agent_id": agent,
                               "event_id": f"{eid}:{agent}"})
                      for agent in random.sample(crowd, 2)]
            pending = [(agent, kw, app.send_task("hitl.claim", kwargs=kw))
                       for agent, kw in racers]
            claims = [(agent, *ask(r, "hitl.claim", kw, f"claim {eid} by {agent}"))
                      for agent, kw, r in pending]
        with lock:
            done["steps"] += 1
        return {"eid": eid, "unclaimed": unclaimed, "started": started, "claims": claims}

    began = time.monotonic()
    killed_log = scale.log(KILLED)
    with ThreadPoolExecutor(CLIENTS) as pool:
        futures = [pool.submit(one_step, i) for i in range(STEPS)]
        # Mid-load, kill host-b hard: its main process and pool children, all at once.
        while done["steps"] < STEPS * 0.4:
            assert time.monotonic() - began < RESULT_TIMEOUT, "the load never got going"
            time.sleep(0.01)
        offset_at_kill = killed_log.stat().st_size
        scale.proc(KILLED).kill()
        killed_at, steps_at_kill = time.monotonic(), done["steps"]
        # Its supervisor brings it back; on start it returns every message left unacknowledged
        # longer than the visibility timeout (what the dead worker held) to its queue.
        time.sleep(max(0.0, killed_at + VISIBILITY_TIMEOUT_S + 1 - time.monotonic()))
        scale.system.restart_worker(scale.hosts[KILLED])
        restarted_at = time.monotonic()
        outcomes = [(f.exception(), f) for f in futures]
    answered_in = time.monotonic() - began
    lost = [str(exc) for exc, _f in outcomes if exc is not None]
    assert not lost, f"unanswered: {lost[:5]}\n" + _trace(scale, lost[:5])
    results = [f.result() for _exc, f in outcomes]

    # Every step: exactly one winning claim; the other racer is told it is resolved.
    winners: dict[str, str] = {}
    for r in results:
        assert r["started"]["execution_id"] == r["eid"]
        assert r["started"]["state"] in ("waiting", "exited"), r
        if r["unclaimed"]:
            continue
        outcomes = Counter(answer["outcome"] for _agent, _id, answer in r["claims"])
        assert outcomes == {"claimed": 1, "already_resolved": 1}, r
        winners[r["eid"]] = next(agent for agent, _id, answer in r["claims"]
                                 if answer["outcome"] == "claimed")

    # Every execution: at least one exit message, every copy the same exit.
    assert scale_flow.wait_count(STEPS, timeout=30) == STEPS, (
        f"exits for {len(scale_flow.exits)} of {STEPS} executions")
    copies = Counter[int]()
    for r in results:
        messages = scale_flow.exits[r["eid"]]
        copies[len(messages)] += 1
        distinct = {json.dumps({k: v for k, v in m.items() if k != "_id"}, sort_keys=True)
                    for m in messages}
        assert len(distinct) == 1, (r["eid"], messages)
        expected = (("timeout", {}) if r["unclaimed"]
                    else ("claimed", {"addClaimedBy": winners[r["eid"]]}))
        assert (messages[0]["exit"], messages[0]["merge_field"]) == expected, r["eid"]

    # The database agrees: one exit per execution, recorded once, one exit message queued.
    engine = make_engine(scale.database_url, pool_size=1)
    try:
        with engine.connect() as conn:
            for r in results:
                row = repo.get_execution(conn, r["eid"])
                expected_exit = "timeout" if r["unclaimed"] else "claimed"
                assert (row.state, row.exit) == ("exited", expected_exit), r["eid"]
                kinds = Counter(e.kind for e in repo.audit_trail(conn, r["eid"]))
                assert kinds["exit_recorded"] == 1, (r["eid"], kinds)
                exits = [o for o in repo.outbox_for_execution(conn, r["eid"]) if o.kind == "exit"]
                assert len(exits) == 1, r["eid"]
    finally:
        engine.dispose()

    # The work was spread: each node's log shows claims it ran.
    logs = {host: scale.log(host).read_text(errors="replace") for host in HOSTS}
    claims_by_log = {host: len(_tasks(text, SUCCEEDED, "hitl.claim"))
                     for host, text in logs.items()}
    claim_ids = [claim_id for r in results for _agent, claim_id, _answer in r["claims"]]
    # What the killed worker had received and not finished: redelivered and run elsewhere (or
    # by itself after its restart), since every client got its answer above.
    before_kill = logs[KILLED].encode()[:offset_at_kill].decode(errors="replace")
    in_flight = _tasks(before_kill, RECEIVED) - _finished(before_kill)
    finished_later = set().union(*(_finished(logs[h]) for h in HOSTS if h != KILLED),
                                 _finished(logs[KILLED][len(before_kill):]))
    every_finished = set().union(*(_finished(text) for text in logs.values()))

    summary = {
        "mode": scale.mode, "why_not_netns": scale.why_not_netns,
        "addresses": scale.addresses, "nodes": scale.hosts,
        "steps": STEPS, "claims": len(claim_ids), "clients": CLIENTS,
        "answered_in_s": round(answered_in, 1),
        "killed": {"host": KILLED, "after_steps": steps_at_kill,
                   "at_s": round(killed_at - began, 1),
                   "restarted_at_s": round(restarted_at - began, 1),
                   "in_flight": _names(before_kill, in_flight),
                   "in_flight_finished_later": len(in_flight & finished_later)},
        "claims_by_log": claims_by_log,
        "exit_copies": {str(k): v for k, v in sorted(copies.items())},
        "client_retries": [{**r, "ran_later": r["unanswered"] in every_finished}
                           for r in retried],
        "connections_through_the_network": scale.forwarded_connections(),
    }
    _write_summary(scale.log(HOSTS[0]).parent, summary)
    print("scale-out:", json.dumps(summary, indent=1))

    for host in HOSTS:  # host-b ran for 40% of the load only; the others share the rest
        # (from the workers' own logs: results do not name their worker, result_extended is off)
        assert claims_by_log[host] >= len(claim_ids) * 0.05, summary
    assert in_flight, f"the kill found {KILLED} idle, so it proved nothing: {summary}"
    assert in_flight <= finished_later, summary
    if scale.addresses:  # separate hosts: each reached PostgreSQL and Redis over the network
        targets = {key.split("->")[1] for key in summary["connections_through_the_network"]}
        for address in scale.addresses.values():
            reached = {key.split("->")[1] for key in summary["connections_through_the_network"]
                       if key.startswith(f"{address}->")}
            assert reached == targets and len(targets) == 2, summary


def _trace(scale: Any, lost: list[str]) -> str:
    """Every log line that mentions the lost tasks' ids, to tell where each one went."""
    ids = [m.group(1) for text in lost if (m := re.search(r"\[([0-9a-f-]{36})\]", text))]
    lines = []
    for path in sorted(scale.system.log_dir.glob("*.log")):
        for line in path.read_text(errors="replace").splitlines():
            if any(task_id in line for task_id in ids):
                lines.append(f"{path.name}: {line[:300]}")
    return "\n".join(lines)


def _write_summary(log_dir: Path, summary: dict[str, Any]) -> None:
    (log_dir / "summary.json").write_text(json.dumps(summary, indent=1))
