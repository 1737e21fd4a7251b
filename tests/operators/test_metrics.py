"""Business metrics (docs/operations.md) after real steps, read as Prometheus reads them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client.multiprocess import MultiProcessCollector

from tests.operators.conftest import OPS_NODE, Ops, total
from tests.support.steps import eventually, request


def test_exits_are_counted_once_each_whichever_process_ran_them(
        ops: Ops, client: Any, agents: Callable[..., str], team: str, flow: Any,
        uid: Callable[[str], str]) -> None:
    # Given an agent of this test's team and the counters as they stand
    agent = agents()
    before = ops.gateway_metrics()

    # When four steps find nobody to offer them to and two are claimed, each task in a pool
    # process of its own (the ops worker replaces a child after every task)
    nobody = [request(team, flow.reply_to, tags=[uid("nobody")]) for _ in range(4)]
    sent = [client.send("hitl.request_assistance", **step) for step in nobody]
    assert {r.get(timeout=20)["exit"] for r in sent} == {"not_claimed"}
    claimed = [request(team, flow.reply_to, timeout="5m") for _ in range(2)]
    for step in claimed:
        assert client.call("hitl.request_assistance", **step)["state"] == "waiting"
        answer = client.call("hitl.claim", execution_id=step["execution_id"], agent_id=agent)
        assert answer["outcome"] == "claimed"
    for step in nobody + claimed:
        flow.wait_for(step["execution_id"])

    # Then the gateway's /metrics counts each exit exactly once, by kind and reason
    def delta(name: str, **labels: str) -> float:
        return total(ops.gateway_metrics(), name, **labels) - total(before, name, **labels)

    assert eventually(lambda: delta("hitl_exits_total", exit="claimed") >= 2)
    assert delta("hitl_exits_total", exit="not_claimed", reason="NO_AGENTS") == 4
    assert delta("hitl_exits_total", exit="claimed") == 2
    assert delta("hitl_time_to_claim_seconds_count") == 2
    assert delta("hitl_step_duration_seconds_count", exit="not_claimed") == 4
    assert delta("hitl_agent_events_total", action="claim", outcome="claimed") == 2
    assert delta("hitl_tasks_total", task="hitl.request_assistance", state="SUCCESS") == 6

    # And the exits were counted in several processes: one file each, merged by the reader
    files_with_exits = [
        f for f in ops.node_dir.glob("counter_*.db")
        if any(s.name == "hitl_exits_total" and s.value
               for m in MultiProcessCollector.merge([str(f)]) for s in m.samples)]
    assert len(files_with_exits) >= 2, files_with_exits

    # And the worker's own endpoint shows the same numbers for its node
    mine = ops.worker_metrics()
    gateway_now = ops.gateway_metrics()
    for labels in ({"exit": "claimed", "reason": ""},
                   {"exit": "not_claimed", "reason": "NO_AGENTS"}):
        assert total(mine, "hitl_exits_total", node=OPS_NODE, **labels) == \
            total(gateway_now, "hitl_exits_total", node=OPS_NODE, **labels)


def test_a_fired_deadline_reports_its_lateness(
        ops: Ops, client: Any, agents: Callable[..., str], team: str, flow: Any) -> None:
    # Given an agent who will not answer
    agents()
    before = ops.gateway_metrics()

    # When a step's one-second timeout passes
    step = request(team, flow.reply_to, timeout="1s")
    assert client.call("hitl.request_assistance", **step)["state"] == "waiting"
    assert flow.wait_for(step["execution_id"])["exit"] == "timeout"

    # Then the lateness histogram has one more observation of a timeout deadline, small
    def observed() -> float:
        return (total(ops.gateway_metrics(), "hitl_timer_lateness_seconds_count", kind="timeout")
                - total(before, "hitl_timer_lateness_seconds_count", kind="timeout"))

    assert eventually(lambda: observed() >= 1)
    after = ops.gateway_metrics()
    late = (total(after, "hitl_timer_lateness_seconds_sum", kind="timeout")
            - total(before, "hitl_timer_lateness_seconds_sum", kind="timeout"))
    assert 0 <= late < 5 * observed()
    fired = {dict(labels)["via"] for (name, labels), value in after.items()
             if name == "hitl_timer_lateness_seconds_count" and value}
    assert fired <= {"wakeup", "reconciler"} and fired


def test_database_gauges_show_what_waits_now(
        ops: Ops, client: Any, agents: Callable[..., str], team: str, flow: Any) -> None:
    # Given a step waiting for an agent
    agents()
    step = request(team, flow.reply_to, timeout="5m")
    assert client.call("hitl.request_assistance", **step)["state"] == "waiting"

    # Then the gateway reads the database at the scrape
    samples = ops.gateway_metrics()
    assert total(samples, "hitl_database_up") == 1
    assert total(samples, "hitl_executions_waiting") >= 1
    assert total(samples, "hitl_executions_oldest_waiting_seconds") >= 0
    assert total(samples, "hitl_timers_pending", kind="timeout") >= 1
    assert 0 <= total(samples, "hitl_reconciler_heartbeat_age_seconds") < 15
    for name in ("hitl_outbox_unsent", "hitl_outbox_oldest_unsent_seconds",
                 "hitl_timers_overdue", "hitl_dead_letters"):
        assert any(n == name for n, _ in samples), name

    # When the flow engine cancels it, it is no longer waiting, and the cancel is counted
    waiting = total(samples, "hitl_executions_waiting")
    assert client.call("hitl.cancel", execution_id=step["execution_id"])["outcome"] == \
        "cancelled"
    after = ops.gateway_metrics()
    assert total(after, "hitl_executions_waiting") <= waiting - 1
    assert total(after, "hitl_cancellations_total") - total(
        samples, "hitl_cancellations_total") == 1


def test_offers_made_and_withdrawn_are_counted_by_why(
        ops: Ops, client: Any, agents: Callable[..., str], team: str, flow: Any) -> None:
    # Given two agents, one offline, and a routed step (§9: priority given)
    alice, bob = agents(), agents(status="offline")
    before = ops.gateway_metrics()

    def delta(name: str, **labels: str) -> float:
        return total(ops.gateway_metrics(), name, **labels) - total(before, name, **labels)

    step = request(team, flow.reply_to, timeout="5m", priority=1)
    assert client.call("hitl.request_assistance", **step)["state"] == "waiting"
    # When bob comes online and alice goes busy
    client.call("hitl.set_agent_status", agent_id=bob, status="available")
    client.call("hitl.set_agent_status", agent_id=alice, status="busy")
    # Then one offer made at dispatch, one made because a status changed, one withdrawn
    assert eventually(lambda: delta("hitl_offers_total", change="withdrawn",
                                    reason="status_not_allowed:busy") == 1)
    assert delta("hitl_offers_total", change="made", reason="at_dispatch") == 1
    assert delta("hitl_offers_total", change="made", reason="status_changed") == 1
    client.call("hitl.cancel", execution_id=step["execution_id"])


def test_sequential_offers_count_missed_and_the_time_to_first_offer(
        ops: Ops, client: Any, agents: Callable[..., str], team: str, flow: Any,
        streams: Any) -> None:
    # Given two agents and a sequential step whose holder is set busy when it misses (§9)
    pair = (agents(), agents())
    before = ops.gateway_metrics()

    def delta(name: str, **labels: str) -> float:
        return total(ops.gateway_metrics(), name, **labels) - total(before, name, **labels)

    step = request(team, flow.reply_to, timeout="5m",
                   offer={"strategy": "sequential", "offer_timeout": "4s", "on_missed": "busy"})
    execution_id = step["execution_id"]
    assert client.call("hitl.request_assistance", **step)["state"] == "waiting"

    def offered(agent_id: str) -> bool:  # read from its stream: a scrape is slower
        return any(e["type"] == "assistance.requested" and e.get("offer")
                   and e["execution_id"] == execution_id for e in streams.events(agent_id))

    holder = eventually(lambda: next((a for a in pair if offered(a)), None))
    assert holder is not None
    second = pair[1] if holder == pair[0] else pair[0]
    # When the holder lets its offer pass, and the second rejects it as soon as it holds it
    # (within its own 4 s: the CI machine may be slow)
    assert eventually(lambda: offered(second), timeout=20)
    assert client.call("hitl.reject", execution_id=execution_id,
                       agent_id=second)["outcome"] == "rejected"
    # Then the step exits: the missed holder is busy now and the only able agent said no
    message = flow.wait_for(execution_id)
    assert (message["exit"], message["merge_field"]["reason"]) == ("not_claimed", "REJECTED")

    # and each offer is counted once by why (made, missed, withdrawn), the first offer once.
    # (The counters are the whole system's: a sequential step another test left waiting
    # would add its misses here, which is why the store fixture cancels what it leaves.)
    def counts() -> tuple[float, ...]:
        return (delta("hitl_offers_total", change="made", reason="at_dispatch"),
                delta("hitl_offers_total", change="made", reason="next_in_sequence"),
                delta("hitl_offers_total", change="missed", reason="missed"),
                delta("hitl_offers_total", change="withdrawn", reason="rejected"),
                delta("hitl_time_to_first_offer_seconds_count"))

    eventually(lambda: counts() == (1, 1, 1, 1, 1))
    assert counts() == (1, 1, 1, 1, 1)
