"""The step execution's transition table (machine.py's docstring), row by row.

Pure: every test builds an :class:`ExecutionView`, sends one event with an injected ``now`` and
asserts the whole :class:`Decision` — outcome, state, exit, merge field, offer change, audit.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from hitl_workers.domain.eligibility import AgentView, Audience
from hitl_workers.domain.machine import (
    AgentRemoved,
    Cancel,
    Claim,
    Close,
    Decision,
    Event,
    ExecutionView,
    Reassess,
    Reject,
    TimerFired,
    TimerView,
    decide,
)

NOW = datetime(2026, 11, 24, 10, 15, 2, tzinfo=UTC)
TAGS = ("channel:sms", "team:billing")
BILLING = (("team:billing",),)
SALES = (("team:sales",),)


# --- factories ------------------------------------------------------------------------------


def agent(agent_id: str = "alice", status: str = "available",
          groups: tuple[tuple[str, ...], ...] = BILLING) -> AgentView:
    return AgentView(agent_id, status, groups)


def waiting(*, policy: str = "any", offers: dict[str, str] | None = None,
            rejected_by: tuple[str, ...] = (), audience: Audience = Audience(),
            timers: dict[str, TimerView] | None = None) -> ExecutionView:
    """A waiting execution offered (by default) to alice, bob and carol."""
    if offers is None:
        offers = dict.fromkeys(("alice", "bob", "carol"), "offered")
    return ExecutionView("exec-1", "waiting", tags=TAGS, audience=audience,
                         reject_policy=policy,  # type: ignore[arg-type]
                         offers=offers, rejected_by=rejected_by, timers=timers or {})


def applied(view: ExecutionView, decision: Decision) -> ExecutionView:
    """``view`` after ``decision`` is written (what services/transitions.py does)."""
    offers = dict(view.offers)
    rejected_by = view.rejected_by
    if decision.offer_change is not None:
        agent_id, status = decision.offer_change
        offers[agent_id] = status
        if status == "rejected" and agent_id not in rejected_by:
            rejected_by = (*rejected_by, agent_id)
    return replace(view, state=decision.state, exit=decision.exit,
                   merge_field=decision.merge_field, offers=offers, rejected_by=rejected_by)


def run(view: ExecutionView, *events: Event) -> tuple[ExecutionView, list[Decision]]:
    decisions = []
    for event in events:
        decision = decide(view, event, NOW)
        decisions.append(decision)
        view = applied(view, decision)
    return view, decisions


def claimed_by(agent_id: str) -> Decision:
    return Decision("claimed", "exited", "claimed", {"addClaimedBy": agent_id}, audit="claimed")


def refused(view: ExecutionView, audit: str, reason: str) -> Decision:
    return Decision("not_eligible", view.state, view.exit, view.merge_field, audit=audit,
                    detail={"reason": reason})


def rejected(*by: str, change: tuple[str, str] | None, **detail: Any) -> Decision:
    return Decision("rejected", "exited", "not_claimed",
                    {"reason": "REJECTED", "rejectedBy": list(by)},
                    offer_change=change, audit="rejected", detail=detail)


# --- waiting + claim ------------------------------------------------------------------------


def test_a_claim_by_an_agent_at_capacity_answers_at_capacity_and_changes_nothing() -> None:
    view = waiting()
    full = AgentView("alice", "available", BILLING, capacity=2, load=2)
    assert decide(view, Claim("alice", full), NOW) == Decision(
        "at_capacity", "waiting", audit="claim_refused", detail={"reason": "at_capacity"})


def test_a_claim_by_an_agent_with_a_free_slot_wins() -> None:
    view = waiting()
    free = AgentView("alice", "available", BILLING, capacity=2, load=1)
    assert decide(view, Claim("alice", free), NOW) == claimed_by("alice")


def test_an_agent_not_allowed_to_act_is_not_eligible_even_at_capacity() -> None:
    view = waiting()
    full = AgentView("alice", "offline", BILLING, capacity=1, load=1)
    assert decide(view, Claim("alice", full), NOW) == refused(
        view, "claim_refused", "status_not_allowed:offline")


@pytest.mark.parametrize("offers", [{"alice": "offered"}, {}], ids=["offered", "not offered"])
def test_an_agent_at_capacity_may_still_reject_and_close(offers: dict[str, str]) -> None:
    full = AgentView("alice", "available", BILLING, capacity=1, load=1)
    view = waiting(offers=offers)
    assert decide(view, Reject("alice", full), NOW).outcome == "rejected"
    assert decide(view, Close("alice", full), NOW).outcome == "closed"


def test_an_eligible_agent_claims_and_the_step_exits_claimed() -> None:
    # Given a waiting execution, When an eligible, available agent claims
    decision = decide(waiting(), Claim("alice", agent("alice")), NOW)
    # Then the step exits claimed with the winner in the merge field
    assert decision == claimed_by("alice")
    assert decision.ends(waiting())


def test_an_eligible_agent_that_was_not_notified_may_claim_too() -> None:
    # Given dave joined the team after dispatch: eligibility, not notification, is the §3 rule
    view = waiting(offers={"alice": "offered"})
    assert decide(view, Claim("dave", agent("dave")), NOW) == claimed_by("dave")


@pytest.mark.parametrize(
    ("claimer", "audience", "reason"),
    [
        pytest.param(None, Audience(), "unknown_agent", id="unknown agent"),
        pytest.param(agent(groups=SALES), Audience(), "not_eligible", id="cannot see"),
        pytest.param(agent(groups=()), Audience(), "not_eligible", id="no rule groups"),
        pytest.param(agent(status="busy"), Audience(), "status_not_allowed:busy", id="busy"),
        pytest.param(agent(status="offline"), Audience(allow_busy=True),
                     "status_not_allowed:offline", id="offline"),
        pytest.param(agent(), Audience(specific_agent_id="bob"), "not_the_specific_agent",
                     id="not the specific agent"),
        pytest.param(agent(groups=SALES), Audience(specific_agent_id="alice"), "not_eligible",
                     id="specific agent who cannot see"),
        pytest.param(agent(status="busy"), Audience(specific_agent_id="alice"),
                     "status_not_allowed:busy", id="specific agent in a wrong status"),
    ],
)
def test_a_claim_by_an_agent_that_may_not_act_changes_nothing(
    claimer: AgentView | None, audience: Audience, reason: str
) -> None:
    view = waiting(audience=audience)
    decision = decide(view, Claim("alice", claimer), NOW)
    assert decision == refused(view, "claim_refused", reason)
    assert not decision.ends(view)


@pytest.mark.parametrize(
    ("status", "audience"),
    [
        ("busy", Audience(allow_busy=True)),
        ("offline", Audience(allow_offline=True)),
        ("available", Audience(specific_agent_id="alice")),
        ("offline", Audience(specific_agent_id="alice", allow_busy=True, allow_offline=True)),
    ],
)
def test_a_claim_in_a_status_the_step_allows_wins(status: str, audience: Audience) -> None:
    view = waiting(audience=audience, offers={"alice": "offered"})
    assert decide(view, Claim("alice", agent(status=status)), NOW) == claimed_by("alice")


def test_a_notified_agent_that_went_offline_may_not_claim() -> None:
    # Given alice was notified, When she is offline at claim time, Then her current status counts
    view = waiting()
    decision = decide(view, Claim("alice", agent(status="offline")), NOW)
    assert decision == refused(view, "claim_refused", "status_not_allowed:offline")


def test_under_all_a_claim_still_wins_after_the_claimer_rejected() -> None:
    view = waiting(policy="all", offers={"alice": "rejected", "bob": "offered"},
                   rejected_by=("alice",))
    assert decide(view, Claim("alice", agent("alice")), NOW) == claimed_by("alice")


# --- waiting + reject -----------------------------------------------------------------------


def test_under_any_the_first_reject_ends_the_step() -> None:
    decision = decide(waiting(), Reject("bob", agent("bob")), NOW)
    assert decision == rejected("bob", change=("bob", "rejected"))


def test_under_any_a_reject_by_an_eligible_agent_not_notified_ends_the_step() -> None:
    view = waiting(offers={"alice": "offered"})
    decision = decide(view, Reject("dave", agent("dave")), NOW)
    assert decision == rejected("dave", change=("dave", "rejected"))


def test_under_all_a_reject_is_recorded_while_others_are_still_to_answer() -> None:
    decision = decide(waiting(policy="all"), Reject("alice", agent("alice")), NOW)
    assert decision == Decision("reject_recorded", "waiting", offer_change=("alice", "rejected"),
                                audit="rejected", detail={"waiting_for": ["bob", "carol"]})


def test_under_all_the_last_reject_ends_the_step_with_rejecters_in_order() -> None:
    # Given carol then alice rejected, When bob (the last notified agent) rejects
    view = waiting(policy="all", offers={"alice": "rejected", "bob": "offered",
                                         "carol": "rejected"}, rejected_by=("carol", "alice"))
    decision = decide(view, Reject("bob", agent("bob")), NOW)
    # Then rejectedBy lists them in the order they rejected, not alphabetically
    assert decision == rejected("carol", "alice", "bob", change=("bob", "rejected"))


def test_under_all_a_repeated_reject_counts_once_and_changes_nothing() -> None:
    # Given alice and bob rejected, When alice rejects again
    view = waiting(policy="all", offers={"alice": "rejected", "bob": "rejected",
                                         "carol": "offered"}, rejected_by=("alice", "bob"))
    decision = decide(view, Reject("alice", agent("alice")), NOW)
    # Then nothing is written (her place in rejectedBy stays first) and carol is awaited
    assert decision == Decision("reject_recorded", "waiting",
                                detail={"waiting_for": ["carol"]})


def test_under_all_the_whole_round_alice_bob_alice_again_carol() -> None:
    view, decisions = run(waiting(policy="all"), *(Reject(a, agent(a)) for a in
                                                  ("alice", "bob", "alice", "carol")))
    assert [d.outcome for d in decisions] == [
        "reject_recorded", "reject_recorded", "reject_recorded", "rejected"]
    assert decisions[-1] == rejected("alice", "bob", "carol", change=("carol", "rejected"))
    assert (view.state, view.exit) == ("exited", "not_claimed")


def test_under_all_an_eligible_agent_not_notified_is_counted_but_not_awaited() -> None:
    # Given only alice was notified, When dave (eligible, never notified) rejects
    _view, decisions = run(waiting(policy="all", offers={"alice": "offered"}),
                          Reject("dave", agent("dave")), Reject("alice", agent("alice")))
    # Then the step still waits for alice, and dave's reject is listed first
    assert decisions[0] == Decision("reject_recorded", "waiting",
                                    offer_change=("dave", "rejected"), audit="rejected",
                                    detail={"waiting_for": ["alice"]})
    assert decisions[1] == rejected("dave", "alice", change=("alice", "rejected"))


def test_under_all_an_offline_notified_agent_is_still_awaited() -> None:
    # "an agent going offline is not a reject"
    view = waiting(policy="all", offers={"alice": "offered", "bob": "offered"})
    decision = decide(view, Reject("alice", agent("alice")), NOW)
    assert decision.outcome == "reject_recorded"
    assert decision.detail == {"waiting_for": ["bob"]}


@pytest.mark.parametrize(
    "answerer",
    [agent(status="offline"), agent(groups=SALES), agent(groups=())],
    ids=["went offline", "can no longer see", "lost every rule group"],
)
def test_a_notified_agent_may_reject_while_its_popup_is_up(answerer: AgentView) -> None:
    decision = decide(waiting(), Reject("alice", answerer), NOW)
    assert decision == rejected("alice", change=("alice", "rejected"))


@pytest.mark.parametrize(
    ("offers", "answerer", "audience", "reason"),
    [
        pytest.param({"alice": "offered"}, None, Audience(), "unknown_agent",
                     id="removed agent with an offer"),
        pytest.param({}, None, Audience(), "unknown_agent", id="unknown agent"),
        pytest.param({}, agent(groups=SALES), Audience(), "not_eligible",
                     id="not notified and cannot see"),
        pytest.param({}, agent(status="busy"), Audience(), "status_not_allowed:busy",
                     id="not notified and busy"),
        pytest.param({"alice": "withdrawn"}, agent(groups=SALES), Audience(), "not_eligible",
                     id="offer withdrawn"),
        pytest.param({"bob": "offered"}, agent(), Audience(specific_agent_id="bob"),
                     "not_the_specific_agent", id="not the specific agent"),
    ],
)
@pytest.mark.parametrize("policy", ["any", "all"])
def test_a_reject_by_an_agent_that_may_not_act_changes_nothing(
    offers: dict[str, str], answerer: AgentView | None, audience: Audience, reason: str,
    policy: str,
) -> None:
    view = waiting(policy=policy, offers=offers, audience=audience)
    assert decide(view, Reject("alice", answerer), NOW) == refused(view, "reject_refused", reason)


# --- waiting + close ------------------------------------------------------------------------


def test_a_close_dismisses_the_popup_for_that_agent_only() -> None:
    decision = decide(waiting(), Close("alice", agent("alice")), NOW)
    assert decision == Decision("closed", "waiting", offer_change=("alice", "closed"),
                                audit="popup_closed")


def test_a_repeated_close_changes_nothing() -> None:
    view = waiting(offers={"alice": "closed", "bob": "offered"})
    assert decide(view, Close("alice", agent("alice")), NOW) == Decision("closed", "waiting")


def test_a_close_after_a_reject_keeps_the_reject() -> None:
    # Given alice rejected under all, When she then closes her popup
    view = waiting(policy="all", offers={"alice": "rejected", "bob": "offered"},
                   rejected_by=("alice",))
    decision = decide(view, Close("alice", agent("alice")), NOW)
    # Then her reject stands: no offer change, and bob's reject still ends the step
    assert decision == Decision("closed", "waiting", audit="popup_closed")
    after = applied(view, decision)
    assert decide(after, Reject("bob", agent("bob")), NOW) == rejected(
        "alice", "bob", change=("bob", "rejected"))


def test_a_close_by_an_agent_not_notified_does_not_make_it_one_who_must_reject() -> None:
    # Given only alice was notified under all, When dave (eligible) closes from his bell list
    _view, decisions = run(waiting(policy="all", offers={"alice": "offered"}),
                          Close("dave", agent("dave")), Reject("alice", agent("alice")))
    # Then no offer is created for dave, and alice's reject alone ends the step
    assert decisions[0] == Decision("closed", "waiting", audit="popup_closed")
    assert decisions[1] == rejected("alice", change=("alice", "rejected"))


@pytest.mark.parametrize(
    ("answerer", "reason"),
    [(None, "unknown_agent"), (agent(groups=SALES), "not_eligible"),
     (agent(status="offline"), "status_not_allowed:offline")],
)
def test_a_close_by_an_agent_that_may_not_act_changes_nothing(
    answerer: AgentView | None, reason: str
) -> None:
    view = waiting(offers={"bob": "offered"})
    assert decide(view, Close("alice", answerer), NOW) == refused(view, "close_refused", reason)


# --- waiting + timers -----------------------------------------------------------------------

TIMER_ROWS = [("countdown", "timer_action", "timer_fired"), ("timeout", "timeout", "timeout_fired")]


def with_timers(**due_in_s: float) -> ExecutionView:
    return waiting(timers={kind: TimerView(NOW + timedelta(seconds=s), "pending")
                           for kind, s in due_in_s.items()})


@pytest.mark.parametrize(("kind", "exit", "audit"), TIMER_ROWS)
def test_a_timer_that_is_due_exits_with_its_exit(kind: str, exit: str, audit: str) -> None:
    view = with_timers(**{kind: 0})
    decision = decide(view, TimerFired(kind), NOW)  # type: ignore[arg-type]
    assert decision == Decision("fired", "exited", exit, {}, audit=audit,  # type: ignore[arg-type]
                                detail={"due_at": NOW.isoformat(), "late_ms": 0.0},
                                timer=kind)  # type: ignore[arg-type]


@pytest.mark.parametrize(("kind", "exit", "audit"), TIMER_ROWS)
def test_a_late_timer_fires_and_records_how_late(kind: str, exit: str, audit: str) -> None:
    view = with_timers(**{kind: -1.5})
    decision = decide(view, TimerFired(kind), NOW)  # type: ignore[arg-type]
    assert decision.outcome == "fired"
    assert decision.detail == {"due_at": (NOW - timedelta(seconds=1.5)).isoformat(),
                               "late_ms": 1500.0}


@pytest.mark.parametrize("kind", ["countdown", "timeout"])
def test_a_timer_woken_early_changes_nothing_and_is_re_armed(kind: str) -> None:
    view = with_timers(**{kind: 0.001})
    assert decide(view, TimerFired(kind), NOW) == Decision("early", "waiting")  # type: ignore[arg-type]


def test_an_offer_timer_on_a_step_that_is_not_sequential_is_retired_not_fired() -> None:
    # Only a sequential step arms an offer timer; a row saying otherwise (written by hand, or
    # left by a bug) must not make every wake-up and reconciler tick fail on it for ever.
    view = with_timers(offer=-60)
    assert decide(view, TimerFired("offer"), NOW) == Decision(
        "stale", "waiting", offer_timer_off=True)
    # A step deadline due with it still ends the step
    assert decide(with_timers(offer=-60, timeout=-1), TimerFired("offer"), NOW).exit == "timeout"


@pytest.mark.parametrize("kind", ["countdown", "timeout"])
@pytest.mark.parametrize("timer_state", ["fired", "cancelled", None])
def test_a_timer_that_is_not_pending_is_stale(kind: str, timer_state: str | None) -> None:
    timers = {} if timer_state is None else {kind: TimerView(NOW - timedelta(1), timer_state)}
    view = waiting(timers=timers)
    assert decide(view, TimerFired(kind), NOW) == Decision("stale", "waiting")  # type: ignore[arg-type]


@pytest.mark.parametrize("woken", ["countdown", "timeout"])
def test_the_earliest_overdue_deadline_decides_whichever_wake_up_arrives(woken: str) -> None:
    # Given both deadlines are overdue, the countdown by more (its wake-up was lost)
    view = with_timers(countdown=-2, timeout=-1)
    # When either wake-up arrives, Then the countdown, which came first, decides
    decision = decide(view, TimerFired(woken), NOW)  # type: ignore[arg-type]
    assert (decision.exit, decision.timer, decision.audit) == (
        "timer_action", "countdown", "timer_fired")


def test_a_countdown_and_a_timeout_due_at_the_same_instant_end_by_the_countdown() -> None:
    view = with_timers(countdown=-1, timeout=-1)
    assert decide(view, TimerFired("timeout"), NOW).exit == "timer_action"


def test_the_countdown_and_the_timeout_are_separate_deadlines() -> None:
    # Given the countdown is due and the timeout is not
    view = with_timers(countdown=-1, timeout=60)
    assert decide(view, TimerFired("countdown"), NOW).exit == "timer_action"
    assert decide(view, TimerFired("timeout"), NOW).outcome == "early"
    # Given the timeout is due first and the countdown is not
    view = with_timers(countdown=60, timeout=-1)
    assert decide(view, TimerFired("timeout"), NOW).exit == "timeout"
    assert decide(view, TimerFired("countdown"), NOW).outcome == "early"


# --- waiting + cancel -----------------------------------------------------------------------


def test_cancel_ends_a_waiting_step_without_an_exit() -> None:
    decision = decide(waiting(), Cancel("the end user left"), NOW)
    assert decision == Decision("cancelled", "cancelled", audit="cancelled",
                                detail={"reason": "the end user left"})
    assert decision.ends(waiting())


# --- waiting + agent removed ----------------------------------------------------------------

WITHDRAWN = {"reason": "agent_removed"}


@pytest.mark.parametrize("offer", ["offered", "closed", "rejected"])
@pytest.mark.parametrize("policy", ["any", "all"])
def test_removing_an_offered_agent_withdraws_its_offer(offer: str, policy: str) -> None:
    rejected_by = ("bob",) if offer == "rejected" else ()
    view = waiting(policy=policy, offers={"alice": "offered", "bob": offer, "carol": "offered"},
                   rejected_by=rejected_by)
    assert decide(view, AgentRemoved("bob"), NOW) == Decision(
        "withdrawn", "waiting", offer_change=("bob", "withdrawn"), audit="offer_withdrawn",
        detail=WITHDRAWN)


def test_under_all_removing_the_last_agent_still_to_answer_completes_the_rejection() -> None:
    # Given alice and carol rejected and bob has not answered, When bob is removed
    view = waiting(policy="all", offers={"alice": "rejected", "bob": "offered",
                                         "carol": "rejected"}, rejected_by=("carol", "alice"))
    decision = decide(view, AgentRemoved("bob"), NOW)
    # Then he no longer counts among those who must reject: the step exits REJECTED
    assert decision == rejected("carol", "alice", change=("bob", "withdrawn"),
                                completed_by_removal_of="bob")


def test_under_all_a_reject_made_before_the_rejecters_removal_still_stands() -> None:
    # Given alice rejected and was then removed, When bob (the last one left) rejects
    _view, decisions = run(waiting(policy="all", offers={"alice": "offered", "bob": "offered"}),
                          Reject("alice", agent("alice")), AgentRemoved("alice"),
                          Reject("bob", agent("bob")))
    assert decisions[1].outcome == "withdrawn"
    assert decisions[2] == rejected("alice", "bob", change=("bob", "rejected"))


def test_under_all_removing_everyone_before_any_reject_does_not_reject() -> None:
    # Nobody rejected: with no one left to answer, the step waits for its timeout
    view, decisions = run(waiting(policy="all", offers={"alice": "offered"}),
                          AgentRemoved("alice"))
    assert decisions == [Decision("withdrawn", "waiting", offer_change=("alice", "withdrawn"),
                                  audit="offer_withdrawn", detail=WITHDRAWN)]
    assert view.state == "waiting"


def test_under_any_removal_never_rejects() -> None:
    view = waiting(offers={"alice": "rejected", "bob": "offered"}, rejected_by=("alice",))
    assert decide(view, AgentRemoved("bob"), NOW).outcome == "withdrawn"


@pytest.mark.parametrize("offers", [{}, {"alice": "withdrawn"}, {"bob": "offered"}],
                         ids=["no offer", "already withdrawn", "offered to others"])
@pytest.mark.parametrize("policy", ["any", "all"])
def test_removing_an_agent_without_a_live_offer_is_stale(offers: dict[str, str],
                                                         policy: str) -> None:
    view = waiting(policy=policy, offers=offers)
    assert decide(view, AgentRemoved("alice"), NOW) == Decision("stale", "waiting")


# --- final states ---------------------------------------------------------------------------

FINAL_VIEWS = {
    "claimed by alice": ("exited", "claimed", {"addClaimedBy": "alice"}),
    "rejected": ("exited", "not_claimed", {"reason": "REJECTED", "rejectedBy": ["alice"]}),
    "no agents": ("exited", "not_claimed", {"reason": "NO_AGENTS"}),
    "not available": ("exited", "not_claimed", {"reason": "NOT_AVAILABLE"}),
    "timer action": ("exited", "timer_action", {}),
    "timeout": ("exited", "timeout", {}),
    "cancelled": ("cancelled", None, None),
    "failed": ("failed", "error", {"error": {"code": "invalid_request", "message": "m",
                                              "fields": ["settings.timeout"]}}),
}


def final(name: str) -> ExecutionView:
    state, exit, merge_field = FINAL_VIEWS[name]
    return replace(waiting(policy="all", timers={
        "timeout": TimerView(NOW - timedelta(seconds=1), "pending")}),
        state=state, exit=exit, merge_field=merge_field)  # type: ignore[arg-type]


def unchanged(view: ExecutionView, outcome: str, audit: str | None = None) -> Decision:
    return Decision(outcome, view.state, view.exit, view.merge_field, audit=audit)


def test_the_winners_repeat_claim_is_already_claimed() -> None:
    view = final("claimed by alice")
    assert view.winner == "alice"
    assert decide(view, Claim("alice", agent("alice")), NOW) == unchanged(view, "already_claimed")


@pytest.mark.parametrize(
    ("name", "claimer"),
    [(name, claimer) for name in FINAL_VIEWS for claimer in ("alice", "bob")
     if (name, claimer) != ("claimed by alice", "alice")],  # the winner's repeat: above
)
def test_every_other_claim_after_the_end_is_already_resolved(name: str, claimer: str) -> None:
    view = final(name)
    decision = decide(view, Claim(claimer, agent(claimer)), NOW)
    assert decision == unchanged(view, "already_resolved", "claim_lost")
    assert not decision.ends(view)


@pytest.mark.parametrize("name", FINAL_VIEWS)
@pytest.mark.parametrize("answerer", ["alice", "bob"])
@pytest.mark.parametrize("event_type", [Reject, Close])
def test_a_reject_or_close_after_the_end_is_already_resolved(
    name: str, answerer: str, event_type: type[Reject] | type[Close]
) -> None:
    view = final(name)
    decision = decide(view, event_type(answerer, agent(answerer)), NOW)
    assert decision == unchanged(view, "already_resolved")


@pytest.mark.parametrize("name", FINAL_VIEWS)
def test_an_unknown_agents_event_after_the_end_is_already_resolved(name: str) -> None:
    view = final(name)
    for event in (Claim("ghost", None), Reject("ghost", None), Close("ghost", None)):
        assert decide(view, event, NOW).outcome == "already_resolved"


@pytest.mark.parametrize("name", FINAL_VIEWS)
def test_cancel_after_the_end_is_already_resolved(name: str) -> None:
    view = final(name)
    assert decide(view, Cancel("late"), NOW) == unchanged(view, "already_resolved")


@pytest.mark.parametrize("name", FINAL_VIEWS)
@pytest.mark.parametrize("kind", ["countdown", "timeout"])
def test_a_timer_after_the_end_is_stale(name: str, kind: str) -> None:
    # Even a timer row still marked pending and overdue: the state decides, not the timer
    view = final(name)
    assert decide(view, TimerFired(kind), NOW) == unchanged(view, "stale")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", FINAL_VIEWS)
def test_an_agent_removed_after_the_end_is_stale(name: str) -> None:
    view = final(name)
    assert decide(view, AgentRemoved("bob"), NOW) == unchanged(view, "stale")


# --- the view -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n in FINAL_VIEWS if n != "claimed by alice"])
def test_only_a_claimed_exit_has_a_winner(name: str) -> None:
    assert final(name).winner is None
    assert waiting().winner is None


# --- waiting + reassess (§9: offers follow eligibility) ---------------------------------------


def routed(**kwargs: Any) -> ExecutionView:
    return replace(waiting(**kwargs), routed=True)


ABLE = agent("dave")
BUSY = agent("dave", "busy")
FULL = AgentView("dave", "available", BILLING, capacity=1, load=1)


@pytest.mark.parametrize("offer", [None, "withdrawn"])
def test_an_agent_that_became_able_is_offered_a_routed_step(offer: str | None) -> None:
    offers = {"alice": "offered"} | ({"dave": offer} if offer else {})
    view = routed(offers=offers)
    assert decide(view, Reassess("dave", ABLE, "status_changed"), NOW) == Decision(
        "offered", "waiting", offer_change=("dave", "offered"), audit="offered",
        detail={"reason": "status_changed"})


@pytest.mark.parametrize("offer", ["offered", "closed", "rejected"])
def test_an_able_agent_holding_rejecting_or_closing_it_is_not_offered_again(offer: str) -> None:
    view = routed(offers={"dave": offer})
    assert decide(view, Reassess("dave", ABLE, "slot_freed"), NOW) == Decision(
        "stale", "waiting")


@pytest.mark.parametrize(("who", "reason"), [
    (BUSY, "status_not_allowed:busy"), (FULL, "at_capacity"),
    (agent("dave", groups=SALES), "not_eligible"), (None, "unknown_agent")])
def test_an_agent_that_became_unable_has_its_open_offer_withdrawn(who: AgentView | None,
                                                                   reason: str) -> None:
    view = routed(offers={"alice": "offered", "dave": "offered"})
    # A capacity makes the agent follow eligibility anyway; a routed step does for everyone.
    assert decide(view, Reassess("dave", who, "status_changed"), NOW) == Decision(
        "withdrawn", "waiting", offer_change=("dave", "withdrawn"), audit="offer_withdrawn",
        detail={"reason": reason})


@pytest.mark.parametrize("offer", [None, "withdrawn", "closed", "rejected"])
def test_an_unable_agent_without_an_open_offer_changes_nothing(offer: str | None) -> None:
    view = routed(offers={"dave": offer} if offer else {})
    assert decide(view, Reassess("dave", BUSY, "status_changed"), NOW) == Decision(
        "stale", "waiting")


def test_under_all_withdrawing_the_last_agent_still_to_answer_completes_the_rejection() -> None:
    view = routed(policy="all", offers={"alice": "rejected", "dave": "offered"},
                  rejected_by=("alice",))
    assert decide(view, Reassess("dave", BUSY, "status_changed"), NOW) == rejected(
        "alice", change=("dave", "withdrawn"), completed_by_withdrawal_from="dave",
        reason="status_not_allowed:busy")


@pytest.mark.parametrize("who", [ABLE, BUSY])
def test_a_step_without_routing_settings_and_an_agent_without_capacity_keep_their_offers(
        who: AgentView) -> None:
    # §1–§5 as before: offered once at dispatch, an offer kept whatever the status does
    view = waiting(offers={"dave": "offered"} if who is BUSY else {})
    assert decide(view, Reassess("dave", who, "status_changed"), NOW) == Decision(
        "stale", "waiting")


def test_an_agent_with_a_capacity_follows_eligibility_on_any_step() -> None:
    view = waiting(offers={}, audience=Audience(allow_busy=True))
    freed = AgentView("dave", "busy", BILLING, capacity=2, load=1)
    assert decide(view, Reassess("dave", freed, "slot_freed"), NOW).outcome == "offered"
    view = waiting(offers={"dave": "offered"})
    assert decide(view, Reassess("dave", FULL, "slot_filled"), NOW).outcome == "withdrawn"


@pytest.mark.parametrize("state", ["exited", "cancelled", "failed"])
def test_a_reassessment_after_the_end_is_stale(state: str) -> None:
    view = replace(routed(), state=state)  # type: ignore[arg-type]
    assert decide(view, Reassess("dave", ABLE, "status_changed"), NOW).outcome == "stale"
