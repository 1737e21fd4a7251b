"""The notification Redis unreachable for a while (hanging, as a partitioned or stopped
server does: connections open, nothing answers until the client's socket timeout, 0.5 s).

Claims and requests must keep working and answering quickly, exit messages (which travel
over the broker, not this Redis) must stay on time, and once the Redis answers again every
notification must arrive from the outbox: each agent sees every offer and every withdrawal
it should, in order, deduplicated on the notification's id (delivery is at least once: a
write that timed out may still land when the server wakes up). A request notification
whose step ended during the outage is dropped rather than shown after its withdrawal.
"""

from __future__ import annotations

import json
import statistics
import time

import pytest

from hitl_workers.notify.streams import stream_key
from tests.faults.harness import (
    INTERVAL_S,
    Report,
    Step,
    assert_each_exits_once_on_time,
    dispatch,
    utc_now,
    wait_until,
)

CATCH_UP_S = 2.0 + 3.0
"""HITL_OUTBOX_RETRY_AFTER_S (2 s in the tests) before the reconciler re-sends a row, plus
slack for the re-send task (its first try may still meet the breaker's pause)."""
SLACK_S = 1.5
WORKERS = {"notify-requests": (("hitl.requests", "hitl.events"), 3),
           "notify-timers": (("hitl.timers", "hitl.outbox"), 2)}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fx(fault_system):
    return fault_system(workers=WORKERS, own_notification_redis=True)


def _stream(fx, agent_id: str) -> list[dict]:
    return [json.loads(fields[b"event"])
            for _id, fields in fx.notifications.xrange(stream_key(agent_id))]


def _timed_call(fx, task: str, **kwargs) -> tuple[dict, float]:
    started = time.monotonic()
    answer = fx.app.send_task(task, kwargs=kwargs).get(timeout=60)
    return answer, time.monotonic() - started


def test_notifications_catch_up_from_the_outbox_and_claims_keep_working(fx):
    tag = fx.team[-8:]
    # Given five steps offered to three agents while the notification Redis answers
    before = [Step(f"fx-nb{i}-{tag}", None, 3600.0) for i in range(5)]
    dispatch(fx.app, before, fx.team, fx.listener.reply_to)
    wait_until(lambda: all(len(_stream(fx, a)) == 5 for a in fx.agents), 10,
               "the first offers")

    # When the notification Redis stops answering
    fx.notify_redis.pause()
    paused_at = utc_now()
    try:
        # agents claim three of the steps
        claim_s = []
        for i, step in enumerate(before[:3]):
            answer, took = _timed_call(fx, "hitl.claim", execution_id=step.execution_id,
                                       agent_id=fx.agents[i])
            assert answer["outcome"] == "claimed"
            claim_s.append(took)
        # new steps are requested; three of them time out (2 s) before it answers again
        during = [Step(f"fx-nd{i}-{tag}", None, 3600.0) for i in range(4)]
        timing_out = [Step(f"fx-nt{i}-{tag}", None, 2.0) for i in range(3)]
        request_s = []
        for step in during + timing_out:
            started = time.monotonic()
            dispatch(fx.app, [step], fx.team, fx.listener.reply_to)
            request_s.append(time.monotonic() - started)
        # Then exits keep flowing on time: the claims' and the timeouts'
        for step in before[:3]:
            assert fx.listener.wait_for(step.execution_id, timeout=10)["exit"] == "claimed"
        report = Report("notification_outage")
        assert_each_exits_once_on_time(fx.db, fx.listener, timing_out, report,
                                       slack_s=SLACK_S)
        # And nothing reached the streams meanwhile: the outbox holds it
        unsent = [r for r in fx.db.notify_outbox(
            [s.execution_id for s in before + during + timing_out]) if r.sent_at is None]
        assert len(unsent) >= 3 + 4 + 3
    finally:
        fx.notify_redis.resume()
    resumed_at = utc_now()

    # Then every notification arrives from the outbox soon after
    ids = [s.execution_id for s in before + during + timing_out]
    wait_until(lambda: all(r.sent_at for r in fx.db.notify_outbox(ids)),
               CATCH_UP_S + INTERVAL_S, "the outbox to catch up")
    caught_up_at = max(r.sent_at for r in fx.db.notify_outbox(ids))
    superseded = [r for r in fx.db.notify_outbox(ids) if (r.last_error or "").startswith(
        "superseded")]
    for agent_index, agent in enumerate(fx.agents):
        events = _stream(fx, agent)
        unique = {e["id"]: e for e in events}
        seen = {(e["type"], e["execution_id"]) for e in unique.values()}
        required = (
            {("assistance.requested", s.execution_id) for s in before + during}
            | {("assistance.withdrawn", s.execution_id) for s in before[:3] + timing_out})
        optional = {("assistance.requested", s.execution_id) for s in timing_out}
        assert required <= seen <= required | optional, (agent, seen ^ required)
        # each withdrawal says how the step ended
        for i, step in enumerate(before[:3]):
            gone = unique[f"withdrawn:{step.execution_id}"]
            assert (gone["state"], gone["exit"], gone["claimed_by"]) == (
                "exited", "claimed", fx.agents[i])
        for step in timing_out:
            gone = unique[f"withdrawn:{step.execution_id}"]
            assert (gone["state"], gone["exit"], gone["claimed_by"]) == (
                "exited", "timeout", None)
        # and no offer comes after its own withdrawal
        order = [(e["type"], e["execution_id"]) for e in events]
        for step in before + during + timing_out:
            offer = ("assistance.requested", step.execution_id)
            gone = ("assistance.withdrawn", step.execution_id)
            if offer in order and gone in order:
                assert order.index(offer) < order.index(gone), (agent, step)
        report.extra.setdefault("duplicate_notifications", 0)
        report.extra["duplicate_notifications"] += len(events) - len(unique)
        assert agent_index >= 0

    report.extra.update({
        "outage_s": round((resumed_at - paused_at).total_seconds(), 2),
        "claim_s": {"median": round(statistics.median(claim_s), 3),
                    "max": round(max(claim_s), 3)},
        "request_s": {"median": round(statistics.median(request_s), 3),
                      "max": round(max(request_s), 3)},
        "notifications_caught_up_s": round((caught_up_at - resumed_at).total_seconds(), 2),
        "requests_superseded": len(superseded)})
    report.write()
    # Claims and requests kept answering: at most one socket timeout (0.5 s) for the
    # processes that met the dead Redis first, quickly for the rest
    assert statistics.median(claim_s + request_s) < 0.5, report.extra
    assert max(claim_s + request_s) < 2.0, report.extra


def test_a_stopped_notification_redis_is_refilled_from_the_outbox_when_it_returns(fx):
    tag = fx.team[-8:]
    # Given the notification Redis stopped (connections refused) and restarted empty
    fx.notify_redis.proc.stop()
    try:
        # When steps are requested, and one of them claimed, meanwhile
        steps = [Step(f"fx-ns{i}-{tag}", None, 3600.0) for i in range(3)]
        started = time.monotonic()
        dispatch(fx.app, steps, fx.team, fx.listener.reply_to)
        answer, claim_s = _timed_call(fx, "hitl.claim", execution_id=steps[0].execution_id,
                                      agent_id=fx.agents[0])
        assert answer["outcome"] == "claimed"
        took_s = time.monotonic() - started
        assert fx.listener.wait_for(steps[0].execution_id, timeout=10)["exit"] == "claimed"
    finally:
        fx.notify_redis.start()
    # Then the outbox fills the new Redis: the offers of the waiting steps, and the
    # withdrawal of the claimed one (whose offer is dropped: it ended before delivery)
    ids = [s.execution_id for s in steps]
    wait_until(lambda: all(r.sent_at for r in fx.db.notify_outbox(ids)),
               CATCH_UP_S + INTERVAL_S, "the outbox to catch up")
    for agent in fx.agents:
        unique = {e["id"]: e for e in _stream(fx, agent)}
        assert {(e["type"], e["execution_id"]) for e in unique.values()} == (
            {("assistance.requested", s.execution_id) for s in steps[1:]}
            | {("assistance.withdrawn", steps[0].execution_id)})
    assert claim_s < 1.0 and took_s < 3.0, (claim_s, took_s)
