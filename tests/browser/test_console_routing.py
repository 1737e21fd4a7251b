"""The console and routing (docs/contract.md §9, issue 10): the agent's load against its
capacity, a sequential offer's own countdown, and the bell list in the gateway's order (higher
priority first, then the oldest). Real Chromium, real gateway, workers and Redis."""

from __future__ import annotations

import json
import re
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from hitl_workers.notify.streams import stream_key
from tests.browser.test_console import popup_settings

try:
    from playwright.sync_api import expect
except ImportError:  # the `browser` fixture fails with how to install it
    expect = None

pytestmark = pytest.mark.browser


@pytest.fixture
def capped(client, team):
    """``capped(capacity) -> agent_id``: an available agent of the team with a capacity."""
    created: list[str] = []

    def make(capacity: int | None) -> str:
        agent_id = f"agent-{uuid.uuid4().hex[:10]}"
        assert client.call("hitl.upsert_agent", agent_id=agent_id, status="available",
                           rule_groups=[[team]], capacity=capacity) == {
            "agent_id": agent_id, "status": "available"}
        created.append(agent_id)
        return agent_id

    yield make
    for agent_id in created:
        client.call("hitl.remove_agent", agent_id=agent_id)


def load_badge(at: Any) -> Any:
    return at.page.locator("#load")


def claim_from_the_bell(at: Any, execution_id: str) -> None:
    at.bell_entry(execution_id).get_by_role("button", name="Claim").click()


# --- 1. load against capacity ---------------------------------------------------------------

def test_the_console_shows_the_agents_load_against_its_capacity(
        console, capped, put_up, client):
    # Given Alice, who may hold two conversations, with her console open
    alice = capped(2)
    at_alice = console(alice)
    expect(load_badge(at_alice)).to_have_text("0 / 2 conversations")
    # When she claims a step from her bell list
    first = put_up()
    claim_from_the_bell(at_alice, first["execution_id"])
    # Then her load says so at once
    expect(at_alice.notices().first).to_contain_text("You claimed")
    expect(load_badge(at_alice)).to_have_text("1 / 2 conversations")
    # And a second claim fills her capacity, which the badge marks
    second = put_up()
    claim_from_the_bell(at_alice, second["execution_id"])
    expect(load_badge(at_alice)).to_have_text("2 / 2 conversations")
    expect(load_badge(at_alice)).to_have_attribute("data-full", "true")
    # When the flow engine releases one, a reload shows the freed slot
    assert client.call("hitl.release", conversation_id=first["conversation_id"],
                       agent_id=alice)["claimed_by"] == []
    at_alice.page.reload()
    at_alice.wait_live()
    expect(load_badge(at_alice)).to_have_text("1 / 2 conversations")
    expect(load_badge(at_alice)).to_have_attribute("data-full", "false")
    assert at_alice.errors == []


def test_an_agent_without_a_capacity_sees_just_its_load(console, capped, put_up):
    alice = capped(None)
    at_alice = console(alice)
    expect(load_badge(at_alice)).to_have_text("0 conversations")
    step = put_up()
    claim_from_the_bell(at_alice, step["execution_id"])
    expect(load_badge(at_alice)).to_have_text("1 conversation")
    expect(load_badge(at_alice)).to_have_attribute("data-full", "false")


def test_a_claim_at_capacity_keeps_the_entry_and_a_freed_slot_offers_it(
        console, capped, put_up, client, flow):
    # Given Alice, capacity 1, holding one conversation
    alice = capped(1)
    at_alice = console(alice)
    held = put_up()
    claim_from_the_bell(at_alice, held["execution_id"])
    expect(load_badge(at_alice)).to_have_text("1 / 1 conversation")
    # And a step that waits for her (at capacity she counts as busy, §9)
    waiting = put_up(allow_busy=True, popup=popup_settings())
    eid = waiting["execution_id"]
    expect(at_alice.popup(eid)).to_have_count(0)  # not offered to her: she is at capacity
    at_alice.page.reload()  # (or the next list, 15 s on): capacity does not hide entries
    at_alice.wait_live()
    expect(at_alice.bell_entry(eid)).to_be_visible()
    # When she tries to claim it anyway
    claim_from_the_bell(at_alice, eid)
    # Then she is told why, nothing changed, and the entry stays
    expect(at_alice.notices().first).to_contain_text("as many conversations as your capacity")
    at_alice.page.wait_for_timeout(500)
    expect(at_alice.bell_entry(eid)).to_be_visible()
    # When the flow engine releases her conversation, the step is offered to her (popup and
    # all) and her load shows the free slot, with no reload
    client.call("hitl.release", conversation_id=held["conversation_id"], agent_id=alice)
    expect(at_alice.popup(eid)).to_be_visible()
    expect(at_alice.popup(eid).locator(".offer-line")).to_have_count(0)  # not sequential
    expect(load_badge(at_alice)).to_have_text("0 / 1 conversation")
    # And her claim now wins
    at_alice.popup(eid).get_by_role("button", name="Take it").click()
    assert flow.wait_for(eid)["merge_field"] == {"addClaimedBy": alice}
    expect(load_badge(at_alice)).to_have_text("1 / 1 conversation")
    assert at_alice.errors == []


# --- 2. a sequential offer's countdown -----------------------------------------------------

def sequential_copy(notification: dict[str, Any], *, expires_in_s: float, round_: int = 1,
                    popup: bool = False) -> dict[str, Any]:
    """The notification a sequential holder gets (docs/contract.md §9): the step's own, with
    an id of its own and ``offer`` (and, when asked, a popup with a 90 s countdown)."""
    now = datetime.now(UTC)
    copy = {**notification, "id": f"{notification['id']}:sequential:{uuid.uuid4().hex[:6]}",
            "offer": {"strategy": "sequential", "round": round_,
                      "expires_at": (now + timedelta(seconds=expires_in_s)).isoformat()}}
    if popup:
        now_ms = int(now.timestamp() * 1000)
        copy["popup"] = {"text": "Refund?", "html": "<p>Refund?</p>",
                         "buttons": [{"action": "claim", "label": "Take it"},
                                     {"action": "close", "label": "Later"}],
                         "display_until_ms": now_ms + 300_000,
                         "countdown_until_ms": now_ms + 90_000, "timers": []}
    return copy


def offer_seconds(locator: Any) -> int:
    text = locator.inner_text().strip()
    match = re.fullmatch(r"Offer expires in (\d+) s( · round \d+)?", text)
    assert match, text
    return int(match.group(1))


def test_a_sequential_offer_shows_its_own_countdown_and_goes_when_withdrawn(
        console, agents, put_up, client, redis_urls):
    # Given a step waiting for Alice (it follows eligibility: it sets a priority), whose
    # broadcast notification looks as it always has: no offer countdown
    alice = agents()
    at_alice = console(alice)
    step = put_up(priority=3)
    eid = step["execution_id"]
    expect(at_alice.bell_entry(eid)).to_be_visible()
    at_alice.page.wait_for_timeout(500)
    expect(at_alice.page.locator(".offer-line")).to_have_count(0)
    # When she is offered it as the holder of a sequential offer, 20 s to answer, round 2
    streams = redis.Redis.from_url(redis_urls["redis"], decode_responses=True)
    [(_id, fields)] = streams.xrange(stream_key(alice))
    offer = sequential_copy(json.loads(fields["event"]), expires_in_s=20, round_=2, popup=True)
    streams.xadd(stream_key(alice), {"event": json.dumps(offer)})
    # Then the popup and the bell entry count the offer down, apart from the step's countdown
    dialog = at_alice.popup(eid)
    expect(dialog).to_be_visible()
    line = dialog.locator(".offer-line")
    expect(line).to_have_text(re.compile(r"Offer expires in (1\d|20) s · round 2"))
    expect(dialog.locator(".countdown-line")).to_have_text(re.compile(r"Auto action in 1:\d\d"))
    bell_line = at_alice.bell_entry(eid).locator(".offer-line")
    expect(bell_line).to_be_visible()
    first = offer_seconds(bell_line)
    expect(bell_line).not_to_have_text(f"Offer expires in {first} s · round 2", timeout=3000)
    assert offer_seconds(bell_line) < first  # it ticks down
    # And a reload shows it again, with the time that is left
    at_alice.page.reload()
    at_alice.wait_live()
    expect(at_alice.popup(eid).locator(".offer-line")).to_have_text(
        re.compile(r"Offer expires in 1\d s · round 2"))
    expect(at_alice.bell_entry(eid).locator(".offer-line")).to_be_visible()
    # When the offer is withdrawn from her while the step waits (here: she went busy)
    client.call("hitl.set_agent_status", agent_id=alice, status="busy")
    # Then the popup and the bell entry go, and stay gone
    expect(at_alice.popup(eid)).to_have_count(0)
    expect(at_alice.bell_entry(eid)).to_have_count(0)
    at_alice.page.wait_for_timeout(1000)
    expect(at_alice.bell_entry(eid)).to_have_count(0)
    assert at_alice.errors == []


def test_an_offer_that_passed_its_time_shows_zero_until_the_gateway_withdraws_it(
        console, agents, put_up, redis_urls):
    alice = agents()
    at_alice = console(alice)
    step = put_up(priority=1)  # no popup: the bell entry alone carries the countdown
    eid = step["execution_id"]
    expect(at_alice.bell_entry(eid)).to_be_visible()
    streams = redis.Redis.from_url(redis_urls["redis"], decode_responses=True)
    [(_id, fields)] = streams.xrange(stream_key(alice))
    offer = sequential_copy(json.loads(fields["event"]), expires_in_s=1.5)
    streams.xadd(stream_key(alice), {"event": json.dumps(offer)})
    countdown = at_alice.bell_entry(eid).locator(".offer-countdown")
    expect(countdown).to_have_text(re.compile(r"[12] s"))
    expect(countdown).to_have_text("0 s", timeout=4000)
    expect(countdown).to_have_attribute("data-expired", "true")
    # The console does not decide the offer is over: the holder's withdrawal does
    withdrawn = {"type": "assistance.withdrawn", "id": f"withdrawn:{eid}:{alice}:missed",
                 "execution_id": eid, "conversation_id": step["conversation_id"],
                 "state": "waiting", "exit": None, "claimed_by": None}
    streams.xadd(stream_key(alice), {"event": json.dumps(withdrawn)})
    expect(at_alice.bell_entry(eid)).to_have_count(0)
    expect(at_alice.notices()).to_have_count(0)  # the step goes on: nothing to announce


# --- 3. the bell list's order --------------------------------------------------------------

BELL_ORDER = """(want) => JSON.stringify([...document.querySelectorAll('#bell-list li')]
  .map((li) => li.dataset.executionId)) === JSON.stringify(want)"""


def wait_for_order(at: Any, want: list[str], timeout_ms: int = 10_000) -> None:
    try:
        at.page.wait_for_function(BELL_ORDER, arg=want, timeout=timeout_ms)
    except Exception:
        shown = at.page.evaluate("[...document.querySelectorAll('#bell-list li')]"
                                 ".map((li) => li.dataset.executionId)")
        raise AssertionError(f"bell list {shown}, wanted {want}") from None


def test_the_bell_list_puts_higher_priority_first_then_the_oldest_live_and_on_reload(
        console, agents, put_up):
    # Given Alice's console open
    alice = agents()
    at_alice = console(alice)
    # When steps arrive one by one, live: priority 0, 9, none (0), 5
    low = put_up(priority=0)
    urgent = put_up(priority=9)
    plain = put_up()
    middle = put_up(priority=5)
    ids = {name: s["execution_id"] for name, s in
           (("low", low), ("urgent", urgent), ("plain", plain), ("middle", middle))}
    # Then her bell list shows them higher priority first, then the oldest
    want = [ids["urgent"], ids["middle"], ids["low"], ids["plain"]]
    wait_for_order(at_alice, want)
    # And a reload keeps that order (the gateway's, not the arrival times)
    at_alice.page.reload()
    at_alice.wait_live()
    wait_for_order(at_alice, want)
    time.sleep(0.5)
    wait_for_order(at_alice, want, timeout_ms=1000)


# --- the whole sequential step, through the real workers ------------------------------------

def test_a_sequential_step_moves_from_the_holders_console_to_the_next(
        console, agents, put_up, flow):
    # Given two agents never offered anything: the first by agent id holds first (§9)
    first, second = sorted(agents() for _ in range(2))
    at_first, at_second = console(first), console(second)
    # When a sequential step is put up, 4 s per offer, a missed offer sets the agent busy
    step = put_up(popup=popup_settings(), offer={
        "strategy": "sequential", "offer_timeout": "4s", "on_missed": "busy"})
    eid = step["execution_id"]
    # Then only the holder sees it, with the offer's countdown
    expect(at_first.popup(eid).locator(".offer-line")).to_have_text(
        re.compile(r"Offer expires in [1-4] s"))
    expect(at_first.bell_entry(eid).locator(".offer-line")).to_be_visible()
    expect(at_second.popup(eid)).to_have_count(0)
    expect(at_second.bell_entry(eid)).to_have_count(0)
    # When the holder lets it time out, it leaves that console, whose status turns busy
    expect(at_first.popup(eid)).to_have_count(0, timeout=10_000)
    expect(at_first.bell_entry(eid)).to_have_count(0)
    expect(at_first.page.get_by_label("Status")).to_have_value("busy")
    # And the next agent holds it, with a countdown of its own, and claims it
    expect(at_second.popup(eid).locator(".offer-line")).to_have_text(
        re.compile(r"Offer expires in [1-4] s"))
    at_second.popup(eid).get_by_role("button", name="Take it").click()
    assert flow.wait_for(eid)["merge_field"] == {"addClaimedBy": second}
    expect(at_second.notices().first).to_contain_text("You claimed")
    expect(load_badge(at_second)).to_have_text("1 conversation")
    assert at_first.errors == at_second.errors == []
