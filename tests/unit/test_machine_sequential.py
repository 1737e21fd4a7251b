"""Sequential offers (§9): machine.py's table rows for ``view.sequential``, row by row.

Pure: each test builds a view of a sequential step (its offers with rounds, and the pool of
agents who can see it), sends one event with an injected ``now``, and asserts the decision.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from hitl_workers.domain.eligibility import AgentView, Audience
from hitl_workers.domain.machine import (
    AgentRemoved,
    Cancel,
    Claim,
    Close,
    Decision,
    ExecutionView,
    OfferChange,
    Reassess,
    Reject,
    TimerFired,
    TimerView,
    decide,
)
from hitl_workers.domain.sequence import Candidate, Sequential, holder, next_holder

NOW = datetime(2026, 12, 5, 4, 0, 0, tzinfo=UTC)
TAGS = ("team:billing",)
BILLING = (("team:billing",),)
DUE = NOW + timedelta(seconds=30)
LONG_AGO = NOW - timedelta(hours=1)


def agent(agent_id: str, status: str = "available", **kw: int) -> AgentView:
    return AgentView(agent_id, status, BILLING, kw.get("capacity"), kw.get("load", 0))


def pool(*agents: AgentView | tuple[AgentView, int, datetime | None]) -> tuple[Candidate, ...]:
    out = []
    for a in agents:
        out.append(Candidate(*a) if isinstance(a, tuple) else Candidate(a))
    return tuple(out)


EVERYONE = pool((agent("alice"), 0, NOW - timedelta(minutes=3)),
                (agent("bob"), 0, NOW - timedelta(minutes=2)),
                (agent("carol"), 0, NOW - timedelta(minutes=1)))


def seq_view(offers: dict[str, tuple[str, int]] | None = None, *,
             members: tuple[Candidate, ...] = EVERYONE, on_missed: str = "keep",
             order: str = "longest_idle", offer_due: datetime | None = NOW,
             timers: dict[str, TimerView] | None = None,
             audience: Audience = Audience()) -> ExecutionView:
    """A waiting sequential step; by default alice holds it (round 1), its offer timer due
    now."""
    if offers is None:
        offers = {"alice": ("offered", 1)}
    rows = {a: s for a, (s, _r) in offers.items()}
    all_timers = {"timeout": TimerView(NOW + timedelta(minutes=5), "pending")}
    if offer_due is not None:
        all_timers["offer"] = TimerView(offer_due, "pending")
    all_timers.update(timers or {})
    return ExecutionView(
        "exec-1", "waiting", tags=TAGS, audience=audience, offers=rows,
        rejected_by=tuple(a for a, s in rows.items() if s == "rejected"),
        timers=all_timers, routed=True,
        sequential=Sequential(30.0, order, on_missed,  # type: ignore[arg-type]
                              {a: r for a, (_s, r) in offers.items()}, members))


def offered(agent_id: str, round_: int, reason: str = "next_in_sequence"
            ) -> tuple[OfferChange, tuple[str, str, dict[str, object]]]:
    return (OfferChange(agent_id, "offered", round_, reason),
            ("offered", agent_id, {"reason": reason, "round": round_,
                                   "expires_at": DUE.isoformat()}))


# --- who holds, who is next -----------------------------------------------------------------


def test_longest_idle_puts_never_offered_first_then_the_oldest_then_the_id() -> None:
    members = pool((agent("zed"), 0, None), (agent("amy"), 0, None),
                   (agent("old"), 0, LONG_AGO), (agent("new"), 0, NOW))
    seq = Sequential(rounds={}, pool=members)
    assert next_holder({}, seq, TAGS, Audience()) == ("amy", 1)
    seq = Sequential(rounds={"amy": 1}, pool=members)
    assert next_holder({"amy": "rejected"}, seq, TAGS, Audience()) == ("zed", 1)


def test_fewest_claimed_puts_the_lowest_load_first_then_the_longest_idle() -> None:
    members = pool((agent("a"), 2, None), (agent("b"), 1, NOW), (agent("c"), 1, LONG_AGO))
    seq = Sequential(order="fewest_claimed", pool=members)
    assert next_holder({}, seq, TAGS, Audience()) == ("c", 1)


def test_unable_agents_are_never_chosen() -> None:
    members = pool(agent("a", "busy"), agent("b", capacity=1, load=1), agent("c"))
    assert next_holder({}, Sequential(pool=members), TAGS, Audience()) == ("c", 1)
    assert next_holder({}, Sequential(pool=members), TAGS, Audience(allow_busy=True)) == ("a", 1)


def test_missed_agents_come_back_only_in_a_new_round() -> None:
    seq = Sequential(rounds={"alice": 1, "bob": 1}, pool=EVERYONE)
    offers = {"alice": "missed", "bob": "missed"}
    assert next_holder(offers, seq, TAGS, Audience()) == ("carol", 1)
    seq = replace(seq, rounds={"alice": 1, "bob": 1, "carol": 1})
    assert next_holder({**offers, "carol": "rejected"}, seq, TAGS, Audience()) == ("alice", 2)


def test_an_offer_from_an_earlier_round_or_withdrawn_counts_as_none() -> None:
    seq = Sequential(rounds={"alice": 2, "bob": 1, "carol": 2}, pool=EVERYONE)
    assert next_holder({"alice": "missed", "bob": "missed", "carol": "withdrawn"}, seq, TAGS,
                       Audience()) == ("bob", 2)


def test_the_holder_is_the_sequential_offer_offered_or_closed() -> None:
    seq = Sequential(rounds={"alice": 1, "bob": 1})
    assert holder({"alice": "missed", "bob": "closed"}, seq) == "bob"
    assert holder({"alice": "missed", "bob": "rejected"}, seq) is None


# --- claim ----------------------------------------------------------------------------------


def test_the_holder_claims_and_the_step_exits_claimed() -> None:
    assert decide(seq_view(), Claim("alice", agent("alice")), NOW) == Decision(
        "claimed", "exited", "claimed", {"addClaimedBy": "alice"}, audit="claimed")


def test_a_holder_who_closed_its_popup_may_still_claim() -> None:
    view = seq_view({"alice": ("closed", 1)})
    assert decide(view, Claim("alice", agent("alice")), NOW).outcome == "claimed"


def test_an_able_non_holder_is_not_offered_it() -> None:
    view = seq_view()
    assert decide(view, Claim("bob", agent("bob")), NOW) == Decision(
        "not_eligible", "waiting", audit="claim_refused", detail={"reason": "not_offered"})


def test_a_holder_at_capacity_answers_at_capacity() -> None:
    full = agent("alice", capacity=1, load=1)
    assert decide(seq_view(), Claim("alice", full), NOW).outcome == "at_capacity"


def test_a_claim_by_an_agent_who_may_not_is_not_eligible_for_its_own_reason() -> None:
    decision = decide(seq_view(), Claim("bob", agent("bob", "offline")), NOW)
    assert decision.detail == {"reason": "status_not_allowed:offline"}


# --- reject ---------------------------------------------------------------------------------


def test_the_holders_reject_passes_the_offer_on() -> None:
    decision = decide(seq_view(), Reject("alice", agent("alice")), NOW)
    change, audit = offered("bob", 1)
    assert decision == Decision(
        "reject_recorded", "waiting", audit="rejected",
        offer_changes=(OfferChange("alice", "rejected", 1, "rejected"), change),
        more_audits=(("offer_withdrawn", "alice", {"reason": "rejected"}), audit),
        offer_due=DUE)


def test_when_every_able_agent_has_rejected_the_step_exits_rejected() -> None:
    view = seq_view({"bob": ("rejected", 1), "carol": ("rejected", 1), "alice": ("offered", 1)})
    decision = decide(view, Reject("alice", agent("alice")), NOW)
    assert (decision.outcome, decision.state, decision.exit) == ("rejected", "exited",
                                                                 "not_claimed")
    assert decision.merge_field == {"reason": "REJECTED",
                                    "rejectedBy": ["bob", "carol", "alice"]}


def test_a_non_holders_reject_is_recorded_and_leaves_the_rotation() -> None:
    decision = decide(seq_view(), Reject("carol", agent("carol")), NOW)
    assert decision == Decision(
        "reject_recorded", "waiting", audit="rejected",
        offer_changes=(OfferChange("carol", "rejected", None, ""),))


def test_a_non_holders_reject_completes_the_rejection_when_nobody_else_is_able() -> None:
    members = pool(agent("alice"), agent("bob"), agent("carol", "offline"))
    view = seq_view({"alice": ("rejected", 1), "bob": ("missed", 1)}, members=members,
                    offer_due=None)
    # Given alice rejected, bob missed (he would get round 2) and carol offline, when bob
    # rejects, then every able agent has rejected
    assert decide(view, Reject("bob", agent("bob")), NOW).outcome == "rejected"


def test_a_repeated_reject_changes_nothing() -> None:
    view = seq_view({"alice": ("offered", 1), "bob": ("rejected", 1)})
    assert decide(view, Reject("bob", agent("bob")), NOW) == Decision("reject_recorded",
                                                                      "waiting")


def test_a_reject_by_an_agent_never_offered_and_unable_is_not_eligible() -> None:
    decision = decide(seq_view(), Reject("bob", agent("bob", "offline")), NOW)
    assert decision.outcome == "not_eligible"
    assert decide(seq_view(), Reject("ghost", None), NOW).outcome == "not_eligible"


def test_a_missed_agent_may_still_reject_whatever_its_status() -> None:
    view = seq_view({"bob": ("missed", 1), "alice": ("offered", 1)})
    decision = decide(view, Reject("bob", agent("bob", "offline")), NOW)
    assert decision.outcome == "reject_recorded"


# --- close ----------------------------------------------------------------------------------


def test_the_holder_closes_and_still_holds() -> None:
    assert decide(seq_view(), Close("alice", agent("alice")), NOW) == Decision(
        "closed", "waiting", audit="popup_closed",
        offer_changes=(OfferChange("alice", "closed", 1, ""),))


def test_the_holders_repeated_close_changes_nothing() -> None:
    view = seq_view({"alice": ("closed", 1)})
    assert decide(view, Close("alice", agent("alice")), NOW) == Decision("closed", "waiting")


def test_a_close_by_another_agent_is_as_before() -> None:
    assert decide(seq_view(), Close("bob", agent("bob")), NOW) == Decision(
        "closed", "waiting", audit="popup_closed")
    assert decide(seq_view(), Close("bob", agent("bob", "offline")), NOW).outcome \
        == "not_eligible"


# --- the offer timer ------------------------------------------------------------------------


def test_an_offer_timeout_marks_the_holder_missed_and_passes_it_on() -> None:
    decision = decide(seq_view(), TimerFired("offer", NOW), NOW)
    change, audit = offered("bob", 1)
    assert decision == Decision(
        "fired", "waiting",
        offer_changes=(OfferChange("alice", "missed", 1, "missed"), change),
        more_audits=(("offer_missed", "alice", {"on_missed": "keep"}),
                     ("offer_withdrawn", "alice", {"reason": "missed"}), audit),
        offer_due=DUE)


@pytest.mark.parametrize("on_missed", ["busy", "offline"])
def test_on_missed_sets_the_agents_status_and_the_next_choice_sees_it(on_missed: str) -> None:
    view = seq_view({"alice": ("offered", 1), "bob": ("rejected", 1), "carol": ("rejected", 1)},
                    on_missed=on_missed)
    decision = decide(view, TimerFired("offer"), NOW)
    assert decision.status_change == ("alice", on_missed)
    # alice, now unable, was the only one left: everyone able has rejected
    assert decision.merge_field == {"reason": "REJECTED", "rejectedBy": ["bob", "carol"]}


def test_an_agent_already_in_the_on_missed_status_is_not_written_again() -> None:
    members = pool(agent("alice", "busy"), agent("bob"))
    view = seq_view(members=members, on_missed="busy", audience=Audience(allow_busy=True))
    decision = decide(view, TimerFired("offer"), NOW)
    assert decision.status_change is None
    assert decision.offer_changes[-1] == OfferChange("bob", "offered", 1, "next_in_sequence")


def test_with_keep_a_lone_agent_who_missed_gets_a_new_round() -> None:
    view = seq_view(members=pool(agent("alice")))
    decision = decide(view, TimerFired("offer"), NOW)
    assert decision.offer_changes[-1] == OfferChange("alice", "offered", 2, "next_in_sequence")
    assert decision.status_change is None


def test_when_nobody_is_able_after_a_miss_the_step_waits_with_nobody_holding() -> None:
    view = seq_view(members=pool(agent("alice")), on_missed="offline")
    decision = decide(view, TimerFired("offer"), NOW)
    assert (decision.outcome, decision.state, decision.offer_due) == ("fired", "waiting", None)
    assert decision.offer_timer_off


def test_an_offer_timer_with_nobody_holding_is_done() -> None:
    view = seq_view({"alice": ("missed", 1)})
    assert decide(view, TimerFired("offer"), NOW) == Decision("stale", "waiting",
                                                              offer_timer_off=True)


def test_an_offer_timer_not_due_re_arms() -> None:
    view = seq_view(offer_due=NOW + timedelta(seconds=1))
    assert decide(view, TimerFired("offer"), NOW) == Decision("early", "waiting")


def test_a_wake_up_for_an_earlier_hold_is_stale() -> None:
    view = seq_view(offer_due=NOW + timedelta(seconds=1))
    assert decide(view, TimerFired("offer", NOW - timedelta(seconds=29)), NOW) == Decision(
        "stale", "waiting")


def test_an_offer_timer_not_pending_is_stale() -> None:
    view = seq_view(timers={"offer": TimerView(NOW, "fired")})
    assert decide(view, TimerFired("offer"), NOW) == Decision("stale", "waiting")


@pytest.mark.parametrize(("kind", "exit"), [("countdown", "timer_action"), ("timeout", "timeout")])
def test_the_steps_own_deadline_due_with_the_offer_timer_ends_it(kind: str, exit: str) -> None:
    view = seq_view(timers={kind: TimerView(NOW, "pending")})
    for fired in ("offer", kind):
        decision = decide(view, TimerFired(fired), NOW)  # type: ignore[arg-type]
        assert (decision.outcome, decision.exit, decision.timer) == ("fired", exit, kind)


def test_cancel_ends_a_sequential_step_as_any() -> None:
    assert decide(seq_view(), Cancel("flow moved on"), NOW).state == "cancelled"


# --- reassess, agent removed ----------------------------------------------------------------


def test_an_agent_who_becomes_able_while_nobody_holds_gets_it() -> None:
    view = seq_view({"alice": ("missed", 1)}, members=pool(agent("alice", "offline"),
                                                           agent("bob", "offline")))
    decision = decide(view, Reassess("bob", agent("bob"), "status_changed"), NOW)
    change, audit = offered("bob", 1, "became_eligible")
    assert decision == Decision("offered", "waiting", offer_changes=(change,),
                                more_audits=(audit,), offer_due=DUE)


def test_one_who_missed_this_round_and_comes_back_gets_the_next_round() -> None:
    view = seq_view({"alice": ("missed", 1)}, members=pool(agent("alice", "offline")))
    decision = decide(view, Reassess("alice", agent("alice"), "status_changed"), NOW)
    assert decision.offer_changes == (OfferChange("alice", "offered", 2, "became_eligible"),)


@pytest.mark.parametrize("offers", [{"alice": ("offered", 1)},
                                    {"alice": ("missed", 1), "bob": ("rejected", 1)}],
                         ids=["someone holds", "it rejected"])
def test_an_agent_who_becomes_able_otherwise_is_stale(offers: dict[str, tuple[str, int]]
                                                      ) -> None:
    view = seq_view(offers)
    assert decide(view, Reassess("bob", agent("bob"), "status_changed"), NOW) == Decision(
        "stale", "waiting")


@pytest.mark.parametrize(("who", "reason"), [
    (agent("alice", "offline"), "status_not_allowed:offline"),
    (agent("alice", capacity=1, load=1), "at_capacity")])
def test_a_holder_who_becomes_unable_is_withdrawn_and_the_next_gets_it(
        who: AgentView, reason: str) -> None:
    decision = decide(seq_view(), Reassess("alice", who, "status_changed"), NOW)
    change, audit = offered("bob", 1)
    assert decision == Decision(
        "withdrawn", "waiting",
        offer_changes=(OfferChange("alice", "withdrawn", 1, reason), change),
        more_audits=(("offer_withdrawn", "alice", {"reason": reason}), audit), offer_due=DUE)


def test_a_non_holder_who_becomes_unable_is_stale() -> None:
    view = seq_view()
    assert decide(view, Reassess("bob", agent("bob", "offline"), "status_changed"),
                  NOW) == Decision("stale", "waiting")


def test_the_holder_removed_is_withdrawn_and_the_next_gets_it() -> None:
    members = tuple(c for c in EVERYONE if c.agent.agent_id != "alice")
    decision = decide(seq_view(members=members), AgentRemoved("alice"), NOW)
    assert decision.offer_changes[0] == OfferChange("alice", "withdrawn", 1, "agent_removed")
    assert decision.offer_changes[1].agent_id == "bob"


def test_another_agent_removed_is_stale() -> None:
    assert decide(seq_view(), AgentRemoved("bob"), NOW) == Decision("stale", "waiting")


def test_the_holder_withdrawn_with_only_rejecters_left_completes_the_rejection() -> None:
    view = seq_view({"bob": ("rejected", 1), "alice": ("offered", 1)},
                    members=pool(agent("alice"), agent("bob")))
    decision = decide(view, Reassess("alice", agent("alice", "offline"), "status_changed"), NOW)
    assert decision.merge_field == {"reason": "REJECTED", "rejectedBy": ["bob"]}
    assert decision.detail == {"completed_by_withdrawal_from": "alice",
                               "reason": "status_not_allowed:offline"}


@pytest.mark.parametrize("event", [Claim("alice", agent("alice")), Reject("alice", None),
                                   Close("alice", None), TimerFired("offer"), Cancel(),
                                   AgentRemoved("alice"),
                                   Reassess("alice", agent("alice"), "status_changed")])
def test_after_the_end_a_sequential_step_answers_as_any(event: object) -> None:
    view = replace(seq_view(), state="exited", exit="timeout", merge_field={})
    decision = decide(view, event, NOW)  # type: ignore[arg-type]
    assert decision.outcome in ("already_resolved", "stale")
    assert decision.offer_changes == ()
