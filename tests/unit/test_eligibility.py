"""Who may see a conversation, who may act now, and who is offered it at dispatch (§1, §3, §5)."""

from __future__ import annotations

import pytest

from hitl_workers.domain.eligibility import (
    AgentView,
    Audience,
    Selection,
    can_see,
    refusal,
    select_agents,
)

TAGS = ("channel:sms", "team:billing", "vip")
BILLING = (("team:billing",),)


def agent(agent_id: str = "alice", status: str = "available",
          groups: tuple[tuple[str, ...], ...] = BILLING) -> AgentView:
    return AgentView(agent_id, status, groups)


# --- can_see --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("groups", "tags", "sees"),
    [
        pytest.param([[]], [], True, id="an empty group matches a conversation without tags"),
        pytest.param([[]], TAGS, True, id="an empty group matches every conversation"),
        pytest.param([], TAGS, False, id="no groups sees nothing"),
        pytest.param([], [], False, id="no groups sees nothing, even untagged"),
        pytest.param([["team:billing"]], TAGS, True, id="one tag among the tags"),
        pytest.param([["team:billing", "vip"]], TAGS, True, id="all tags of a group present"),
        pytest.param([["team:billing", "team:sales"]], TAGS, False,
                     id="one tag of a group missing"),
        pytest.param([["team:sales"], ["vip"]], TAGS, True, id="any group suffices"),
        pytest.param([["team:sales"], ["team:support"]], TAGS, False, id="no group matches"),
        pytest.param([["team:sales"], []], TAGS, True, id="an empty group among others"),
        pytest.param([["Team:Billing"]], TAGS, False, id="tags are compared exactly"),
        pytest.param([["team:billing"]], [], False, id="an untagged conversation"),
    ],
)
def test_can_see(groups: list[list[str]], tags: list[str], sees: bool) -> None:
    assert can_see(groups, tags) is sees


def test_can_see_takes_any_iterables() -> None:
    assert can_see((g for g in [("vip",)]), iter(TAGS))


# --- allowed statuses -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("allow_busy", "allow_offline", "allowed"),
    [
        (False, False, {"available"}),
        (True, False, {"available", "busy"}),
        (False, True, {"available", "offline"}),
        (True, True, {"available", "busy", "offline"}),
    ],
)
def test_allowed_statuses(allow_busy: bool, allow_offline: bool, allowed: set[str]) -> None:
    audience = Audience(allow_busy=allow_busy, allow_offline=allow_offline)
    assert audience.allowed_statuses == allowed


def test_the_default_audience_is_every_eligible_available_agent() -> None:
    assert Audience() == Audience(specific_agent_id=None, allow_busy=False, allow_offline=False)


# --- refusal (the §3 "may act now" rule) ----------------------------------------------------


@pytest.mark.parametrize(
    ("who", "audience", "reason"),
    [
        pytest.param(agent(), Audience(), None, id="eligible and available"),
        pytest.param(None, Audience(), "unknown_agent", id="unknown agent"),
        pytest.param(agent(groups=(("team:sales",),)), Audience(), "not_eligible",
                     id="cannot see"),
        pytest.param(agent(groups=()), Audience(), "not_eligible", id="no rule groups"),
        pytest.param(agent(status="busy"), Audience(), "status_not_allowed:busy", id="busy"),
        pytest.param(agent(status="offline"), Audience(allow_busy=True),
                     "status_not_allowed:offline", id="offline, busy allowed"),
        pytest.param(agent(status="busy"), Audience(allow_busy=True), None, id="busy allowed"),
        pytest.param(agent(status="offline"), Audience(allow_offline=True), None,
                     id="offline allowed"),
        pytest.param(agent(), Audience(specific_agent_id="alice"), None,
                     id="the specific agent"),
        pytest.param(agent("bob"), Audience(specific_agent_id="alice"),
                     "not_the_specific_agent", id="not the specific agent"),
        pytest.param(agent(groups=()), Audience(specific_agent_id="alice"), "not_eligible",
                     id="the specific agent who cannot see"),
        pytest.param(agent(status="offline"), Audience(specific_agent_id="alice"),
                     "status_not_allowed:offline", id="the specific agent offline"),
    ],
)
def test_refusal(who: AgentView | None, audience: Audience, reason: str | None) -> None:
    assert refusal(who, TAGS, audience) == reason


def test_a_specific_agent_may_not_act_in_a_wrong_status_even_when_it_cannot_see() -> None:
    # Visibility is checked before status: the reason names the first rule broken
    bob = agent("bob", status="busy", groups=())
    assert refusal(bob, TAGS, Audience(specific_agent_id="alice")) == "not_the_specific_agent"
    assert refusal(bob, TAGS, Audience()) == "not_eligible"


# --- select_agents: fan-out -----------------------------------------------------------------


def test_fan_out_offers_every_eligible_agent_in_an_allowed_status() -> None:
    # Given a team, an outsider, a busy and an offline colleague
    agents = [agent("alice"), agent("bob", groups=(("team:sales",),)),
              agent("carol"), agent("dave", status="busy"), agent("erin", status="offline"),
              agent("frank", groups=())]
    selection = select_agents(agents, TAGS, Audience())
    # Then only alice and carol are notified, and every other agent's reason is kept
    assert selection == Selection(
        ("alice", "carol"),
        {"bob": "not_eligible", "dave": "status_not_allowed:busy",
         "erin": "status_not_allowed:offline", "frank": "not_eligible"})


def test_fan_out_keeps_the_directory_order() -> None:
    agents = [agent("zed"), agent("amy"), agent("kim")]
    assert select_agents(agents, TAGS, Audience()).notified == ("zed", "amy", "kim")


def test_fan_out_with_nobody_who_can_see_is_no_agents() -> None:
    agents = [agent("bob", groups=(("team:sales",),)), agent("frank", groups=())]
    assert select_agents(agents, TAGS, Audience()) == Selection(
        (), {"bob": "not_eligible", "frank": "not_eligible"}, "NO_AGENTS")


def test_fan_out_with_an_empty_directory_is_no_agents() -> None:
    assert select_agents([], TAGS, Audience()) == Selection((), {}, "NO_AGENTS")


def test_fan_out_with_eligible_agents_none_in_an_allowed_status_is_not_available() -> None:
    agents = [agent("dave", status="busy"), agent("erin", status="offline"),
              agent("bob", groups=(("team:sales",),))]
    assert select_agents(agents, TAGS, Audience()) == Selection(
        (), {"dave": "status_not_allowed:busy", "erin": "status_not_allowed:offline",
             "bob": "not_eligible"}, "NOT_AVAILABLE")


@pytest.mark.parametrize(
    ("audience", "notified", "not_claimed"),
    [
        (Audience(), (), "NOT_AVAILABLE"),
        (Audience(allow_busy=True), ("dave",), None),
        (Audience(allow_offline=True), ("erin",), None),
        (Audience(allow_busy=True, allow_offline=True), ("dave", "erin"), None),
    ],
)
def test_allow_busy_and_allow_offline_widen_who_is_notified(
    audience: Audience, notified: tuple[str, ...], not_claimed: str | None
) -> None:
    agents = [agent("dave", status="busy"), agent("erin", status="offline")]
    selection = select_agents(agents, TAGS, audience)
    assert (selection.notified, selection.not_claimed) == (notified, not_claimed)


def test_with_everyone_offline_and_offline_allowed_the_step_still_waits() -> None:
    # Given every eligible agent is offline, When the step allows busy and offline agents
    agents = [agent("erin", status="offline"), agent("fred", status="offline")]
    selection = select_agents(agents, TAGS, Audience(allow_busy=True, allow_offline=True))
    # Then they are notified (no NOT_AVAILABLE): the step waits for an answer or its timeout
    assert selection == Selection(("erin", "fred"), {}, None)


# --- select_agents: a specific agent --------------------------------------------------------


def test_a_specific_agent_that_exists_and_may_see_is_the_only_one_notified() -> None:
    agents = [agent("alice"), agent("bob"), agent("carol", groups=())]
    selection = select_agents(agents, TAGS, Audience(specific_agent_id="bob"))
    # Other agents are trivially "not the one" and are not listed as skipped
    assert selection == Selection(("bob",), {}, None)


def test_a_specific_agent_that_does_not_exist_is_no_agents() -> None:
    selection = select_agents([agent("alice")], TAGS, Audience(specific_agent_id="ghost"))
    assert selection == Selection((), {"ghost": "unknown_agent"}, "NO_AGENTS")
    assert select_agents([], TAGS, Audience(specific_agent_id="ghost")) == selection


def test_a_specific_agent_that_may_not_see_is_no_agents_with_its_reason() -> None:
    selection = select_agents([agent("bob", groups=(("team:sales",),))], TAGS,
                              Audience(specific_agent_id="bob"))
    # The audit trail says why: it exists but cannot see (not "unknown_agent")
    assert selection == Selection((), {"bob": "not_eligible"}, "NO_AGENTS")


@pytest.mark.parametrize("status", ["busy", "offline"])
def test_a_specific_agent_that_may_see_in_a_wrong_status_is_not_available(status: str) -> None:
    selection = select_agents([agent("bob", status=status)], TAGS,
                              Audience(specific_agent_id="bob"))
    assert selection == Selection((), {"bob": f"status_not_allowed:{status}"}, "NOT_AVAILABLE")


def test_a_specific_agent_in_an_allowed_status_is_notified() -> None:
    audience = Audience(specific_agent_id="bob", allow_busy=True, allow_offline=True)
    for status in ("available", "busy", "offline"):
        selection = select_agents([agent("bob", status=status)], TAGS, audience)
        assert selection == Selection(("bob",), {}, None)


def test_a_specific_agent_that_cannot_see_is_no_agents_whatever_its_status() -> None:
    # "may not see" wins over "not in an allowed status": NO_AGENTS, not NOT_AVAILABLE
    selection = select_agents([agent("bob", status="offline", groups=())], TAGS,
                              Audience(specific_agent_id="bob"))
    assert selection.not_claimed == "NO_AGENTS"


# --- capacity (§9) --------------------------------------------------------------------------


def full(agent_id: str = "alice", status: str = "available", *, load: int = 2,
         capacity: int = 2) -> AgentView:
    return AgentView(agent_id, status, BILLING, capacity, load)


@pytest.mark.parametrize(("capacity", "load", "reason"), [
    pytest.param(None, 50, None, id="no capacity is unlimited"),
    pytest.param(3, 2, None, id="below capacity"),
    pytest.param(3, 3, "at_capacity", id="at capacity"),
    pytest.param(1, 4, "at_capacity", id="over capacity (capacity lowered)"),
])
def test_an_agent_at_its_capacity_may_not_claim(capacity: int | None, load: int,
                                                reason: str | None) -> None:
    who = AgentView("alice", "available", BILLING, capacity, load)
    assert refusal(who, TAGS, Audience()) == reason


def test_visibility_and_status_are_named_before_capacity() -> None:
    assert refusal(full(status="offline"), TAGS, Audience()) == "status_not_allowed:offline"
    assert refusal(AgentView("alice", "available", (("sales",),), 1, 1), TAGS,
                   Audience()) == "not_eligible"


def test_at_dispatch_an_agent_at_capacity_is_skipped_and_the_others_are_offered() -> None:
    picked = select_agents([full("alice"), agent("bob")], TAGS, Audience())
    assert picked == Selection(("bob",), {"alice": "at_capacity"})


def test_at_dispatch_with_everyone_at_capacity_the_step_is_not_available() -> None:
    picked = select_agents([full("alice"), agent("bob", "offline")], TAGS, Audience())
    assert picked == Selection((), {"alice": "at_capacity",
                                    "bob": "status_not_allowed:offline"}, "NOT_AVAILABLE")


def test_with_allow_busy_a_step_whose_agents_are_all_at_capacity_waits_for_a_slot() -> None:
    picked = select_agents([full("alice")], TAGS, Audience(allow_busy=True))
    assert picked == Selection((), {"alice": "at_capacity"}, None)


def test_with_allow_busy_a_busy_agent_below_capacity_is_offered() -> None:
    picked = select_agents([full("alice", "busy", load=1)], TAGS, Audience(allow_busy=True))
    assert picked == Selection(("alice",), {})
