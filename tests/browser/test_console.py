"""The agent console in real headless Chromium (docs/contract.md §6, §8).

How to run (tests/browser/README): install Debian's Chromium and the Playwright package —
``apt-get update && apt-get install -y chromium`` and ``pip install -e '.[browser]'`` (never
``playwright install``: the tests drive /usr/bin/chromium through ``executable_path``) — then
``pytest -m browser tests/browser``. The suite starts PostgreSQL-backed workers, beat and the
gateway itself; without Chromium or Playwright the tests fail, they do not skip.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from tests.gateway.harness import Gateway, bearer
from tests.support.fixtures import ARTIFACTS

try:
    from playwright.sync_api import expect
except ImportError:  # the `browser` fixture fails with how to install it
    expect = None

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
SCREENSHOT = REPO / "docs" / "img" / "console-popup.png"

HOSTILE = """**Look** at this:

<script>window.__pwned = 'script'; alert('script')</script>
<img src="x" onerror="window.__pwned = 'onerror'; alert('onerror')">
[click me](javascript:window.__pwned='link';alert('link'))
<a href="javascript:window.__pwned='raw-link'">raw link</a>
<svg onload="window.__pwned='svg'"></svg>
![pixel](javascript:window.__pwned='image')
[data](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)
<iframe src="javascript:window.__pwned='iframe'"></iframe>
<p onclick="window.__pwned='click'">click the paragraph</p>
"""


def popup_settings(**popup: Any) -> dict[str, Any]:
    now_ms = int(time.time() * 1000)
    base = {
        "text": "**VIP** customer asks about a *refund*\n\nOrder `#4411`, paid by card.",
        "buttons": {"claim": {"label": "Take it"}, "close": {"label": "Later"},
                    "reject": {"label": "Decline"}},
        "display_for": "5m",
        "timer": {"auto_action_timeout": "90s"},
        "additional_timers": [{"label": "In queue", "since": now_ms - 95_000},
                              {"label": "Customer waiting", "since": (now_ms - 42_000) / 1000}],
    }
    base.update(popup)
    return base


def test_two_agents_get_the_popup_one_claims_and_the_other_loses_it(
        console, agents, put_up, flow):
    # Given Alice and Bob, each with the console open in a browser of their own
    alice = agents(name="Alice Agent")
    bob = agents(name="Bob Agent")
    at_alice, at_bob = console(alice), console(bob)
    # When a step with a popup is put up
    step = put_up(browser_notification=True, popup=popup_settings(),
                  contact={"id": "contact-1", "name": "Ada Lovelace", "phone": "+15550100"})
    eid = step["execution_id"]
    # Then both get the popup: an accessible dialog with the contact, the rendered Markdown,
    # the configured labels in order, a ticking countdown and the two count-up timers
    for page in (at_alice, at_bob):
        dialog = page.popup(eid)
        expect(dialog).to_be_visible()
        assert dialog.get_attribute("aria-modal") == "true"
        expect(page.page.get_by_role("dialog", name=re.compile("Ada Lovelace"))).to_be_visible()
        expect(dialog.locator(".contact")).to_contain_text("+15550100")
        expect(dialog.locator(".popup-text strong")).to_have_text("VIP")
        expect(dialog.locator(".popup-text em")).to_have_text("refund")
        buttons = dialog.get_by_role("button")
        expect(buttons).to_have_text(["Take it", "Later", "Decline"])
        expect(dialog.get_by_role("button", name="Take it")).to_be_visible()
        expect(dialog.locator(".timer-line")).to_have_count(2)
        expect(dialog.locator(".timer-line").nth(0)).to_have_text(
            re.compile(r"In queue 1:[34]\d"))
        expect(dialog.locator(".timer-line").nth(1)).to_have_text(
            re.compile(r"Customer waiting 0:[45]\d"))
        countdown = dialog.locator("time.countdown")
        first = countdown.inner_text()
        assert re.fullmatch(r"1:[23]\d", first), first
        expect(countdown).not_to_have_text(first, timeout=3000)  # it ticks
        expect(page.bell_entry(eid)).to_be_visible()
        expect(page.page.locator("#bell-count")).to_have_text("1")
    save_screenshot(at_bob)
    # When Alice claims
    at_alice.popup(eid).get_by_role("button", name="Take it").click()
    # Then her popup and bell entry go, and she is told she won
    expect(at_alice.popup(eid)).to_have_count(0)
    expect(at_alice.bell_entry(eid)).to_have_count(0)
    expect(at_alice.notices().first).to_contain_text("You claimed Ada Lovelace")
    # And Bob's popup closes and his bell entry goes, with who won
    expect(at_bob.popup(eid)).to_have_count(0)
    expect(at_bob.bell_entry(eid)).to_have_count(0)
    expect(at_bob.notices().first).to_contain_text(f"claimed by {alice}")
    # And the flow engine got exactly one exit, claimed by Alice
    assert flow.wait_for(eid)["merge_field"] == {"addClaimedBy": alice}
    assert flow.count_for(eid) == 1
    assert at_alice.errors == at_bob.errors == []


def save_screenshot(at: Any) -> None:
    shot = ARTIFACTS / "console-popup.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    at.page.screenshot(path=str(shot))
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, SCREENSHOT)


def test_a_lost_claim_says_who_won(console, agents, put_up, api_as):
    # Given Carol, who came online after the step was offered to Alice
    alice = agents()
    step = put_up(popup=popup_settings())
    carol = agents()
    at_carol = console(carol)
    entry = at_carol.bell_entry(step["execution_id"])
    expect(entry).to_be_visible()  # from the bell list: she may claim it too
    # When Alice claims first, then Carol clicks Claim in her bell list
    assert api_as(alice).post(f"/executions/{step['execution_id']}/claim").status_code == 200
    entry.get_by_role("button", name="Claim").click()
    # Then Carol is told clearly who won, and the entry goes
    expect(at_carol.notices().first).to_contain_text(f"Too late: {alice} claimed")
    expect(entry).to_have_count(0)


def test_reject_ends_the_step_rejected(console, agents, put_up, flow):
    alice = agents()
    at_alice = console(alice)
    step = put_up(popup=popup_settings())
    dialog = at_alice.popup(step["execution_id"])
    dialog.get_by_role("button", name="Decline").click()
    exit_message = flow.wait_for(step["execution_id"])
    assert exit_message["exit"] == "not_claimed"
    assert exit_message["merge_field"] == {"reason": "REJECTED", "rejectedBy": [alice]}
    expect(dialog).to_have_count(0)
    expect(at_alice.bell_entry(step["execution_id"])).to_have_count(0)
    expect(at_alice.notices().first).to_contain_text("You rejected")


def test_close_dismisses_the_popup_and_keeps_the_bell_entry(console, agents, put_up):
    alice = agents()
    at_alice = console(alice)
    step = put_up(popup=popup_settings(buttons={"close": {"enabled": True, "label": "Not now"}}))
    at_alice.popup(step["execution_id"]).get_by_role("button", name="Not now").click()
    expect(at_alice.popup(step["execution_id"])).to_have_count(0)
    expect(at_alice.bell_entry(step["execution_id"])).to_be_visible()


def test_only_enabled_buttons_show(console, agents, put_up):
    at_alice = console(agents())
    step = put_up(popup={"text": "hi", "buttons": {"close": {"enabled": False},
                                                   "reject": {"label": "No thanks"}}})
    dialog = at_alice.popup(step["execution_id"])
    expect(dialog.get_by_role("button")).to_have_text(["Claim", "No thanks"])
    expect(dialog.locator("time.countdown")).to_have_count(0)  # no timer configured


def test_hostile_markdown_does_not_execute(console, agents, put_up):
    # Given a console, and a step whose popup text and contact are hostile
    at_alice = console(agents())
    hostile_contact = {"name": "<img src=x onerror=\"window.__pwned='contact'\">Eve",
                       "note": "<script>window.__pwned='contact-script'</script>"}
    step = put_up(popup=popup_settings(text=HOSTILE), contact=hostile_contact)
    dialog = at_alice.popup(step["execution_id"])
    expect(dialog).to_be_visible()
    expect(dialog.locator(".popup-text strong")).to_have_text("Look")
    # When the agent clicks everything clickable in the text
    url = at_alice.page.url
    for link in dialog.locator(".popup-text a").all():
        link.click()
    dialog.locator(".popup-text p").last.click()
    at_alice.page.wait_for_timeout(500)
    # Then nothing ran: no flag, no dialog, no error, no navigation
    assert at_alice.page.evaluate("window.__pwned") is None
    assert at_alice.dialogs == []
    assert at_alice.errors == []
    assert at_alice.page.url == url
    # And the popup holds no active content at all (the hostile parts show as inert text)
    assert dialog.locator(".popup-text").evaluate(ACTIVE_CONTENT) == []
    # And the hostile contact shows as text, not as markup
    expect(dialog.locator(".popup-title")).to_contain_text('<img src=x onerror=')
    assert dialog.locator(".contact img").count() == 0


def test_popup_hides_after_display_for_and_the_bell_entry_goes_when_withdrawn(
        console, agents, put_up, flow):
    at_alice = console(agents())
    step = put_up(popup=popup_settings(display_for="2s", timer={"auto_action_timeout": "5s"}))
    eid = step["execution_id"]
    expect(at_alice.popup(eid)).to_be_visible()
    # display_for passed: the popup hides, the conversation still needs action
    expect(at_alice.popup(eid)).to_have_count(0, timeout=5000)
    expect(at_alice.bell_entry(eid)).to_be_visible()
    # the countdown ran out: the step exits timer_action and the entry is withdrawn
    assert flow.wait_for(eid, timeout=15)["exit"] == "timer_action"
    expect(at_alice.bell_entry(eid)).to_have_count(0)
    expect(at_alice.notices().first).to_contain_text("countdown ran out")


ACTIVE_CONTENT = """(root) => {
  const found = [];
  for (const node of root.querySelectorAll("*")) {
    if (["script", "img", "iframe", "svg", "object", "embed", "style"].includes(
        node.localName)) found.push(node.localName);
    for (const attr of node.attributes) {
      if (attr.name.startsWith("on") || /^\\s*(javascript|data|vbscript):/i.test(attr.value)) {
        found.push(`${node.localName} ${attr.name}=${attr.value}`);
      }
    }
  }
  return found;
}"""

def test_a_repeated_notification_shows_once(console, agents, put_up, redis_urls, api_as):
    # At least once (§6): after a worker crash the outbox can publish a notification again
    import redis

    from hitl_workers.notify.streams import StreamPublisher, stream_key

    alice = agents()
    at_alice = console(alice)
    step = put_up(popup=popup_settings())
    eid = step["execution_id"]
    expect(at_alice.popup(eid)).to_be_visible()
    client = redis.Redis.from_url(redis_urls["redis"], decode_responses=True)
    [(_id, fields)] = client.xrange(stream_key(alice))
    again = StreamPublisher(client, maxlen=1000)
    # When the same notification (same id) arrives twice more
    again.publish([alice], json.loads(fields["event"]))
    again.publish([alice], json.loads(fields["event"]))
    at_alice.page.wait_for_timeout(800)
    # Then it shows once
    expect(at_alice.page.locator('[role="dialog"]')).to_have_count(1)
    expect(at_alice.page.locator("#bell-list li")).to_have_count(1)
    # And a copy arriving after the step ended does not bring it back
    assert api_as(alice).post(f"/executions/{eid}/claim").status_code == 200
    expect(at_alice.popup(eid)).to_have_count(0)
    again.publish([alice], json.loads(fields["event"]))
    at_alice.page.wait_for_timeout(800)
    expect(at_alice.popup(eid)).to_have_count(0)
    expect(at_alice.bell_entry(eid)).to_have_count(0)


NOTIFICATION_SPY = """
window.__notifications = [];
Document.prototype.hasFocus = function () { return false; };
window.Notification = class {
  static permission = 'granted';
  static requestPermission() { return Promise.resolve('granted'); }
  constructor(title, options) {
    window.__notifications.push({title, body: (options || {}).body || ''});
  }
  close() {}
};
"""


def test_native_notification_when_asked_and_not_focused(console, agents, put_up):
    at_alice = console(agents(), init_script=NOTIFICATION_SPY)
    quiet = put_up(popup={"text": "no ping"}, browser_notification=False)
    loud = put_up(popup={"text": "**Ping** me"}, browser_notification=True,
                  contact={"name": "Grace Hopper"})
    expect(at_alice.popup(loud["execution_id"])).to_be_visible()
    expect(at_alice.popup(quiet["execution_id"])).to_be_visible()
    shown = at_alice.page.evaluate("window.__notifications")
    assert shown == [{"title": "Assistance requested: Grace Hopper", "body": "Ping me"}]


def test_the_console_asks_permission_for_notifications(console, agents):
    ask = NOTIFICATION_SPY.replace("static permission = 'granted'",
                                   "static permission = 'default'")
    at_alice = console(agents(), init_script=ask)
    expect(at_alice.page.get_by_role("button", name="Enable desktop notifications")
           ).to_be_visible()


def test_status_is_set_from_the_console(console, agents, put_up, api_as):
    alice = agents()
    at_alice = console(alice)
    step = put_up()
    expect(at_alice.bell_entry(step["execution_id"])).to_be_visible()
    at_alice.page.get_by_label("Status").select_option("busy")
    expect(at_alice.notices().first).to_contain_text("Your status is now busy")
    assert api_as(alice).get("/me").json()["status"] == "busy"
    # Busy is not allowed by the step: it leaves her bell list
    expect(at_alice.bell_entry(step["execution_id"])).to_have_count(0)


def test_sign_in_link_is_taken_out_of_the_address_bar(console, agents, browser, gateway):
    alice = agents()
    at_alice = console(alice)
    assert "token" not in at_alice.page.url
    expect(at_alice.page.locator("#agent-name")).to_contain_text(alice)
    at_alice.page.reload()
    at_alice.wait_live()  # still signed in: the token is in sessionStorage
    expect(at_alice.page.locator("#dev-form")).to_be_hidden()
    # A forged link signs nobody in
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"{gateway.url}/?token=forged.token.value")
        expect(page.get_by_role("alert")).to_contain_text("not valid")
        expect(page.locator("#workspace")).to_be_hidden()
        expect(page.locator("#dev-form")).to_be_hidden()
    finally:
        context.close()


def test_dev_sign_in_only_when_enabled(browser, agents, system):
    gateway = Gateway("gateway-browser-dev", env={"HITL_DEV_LOGIN": "true"}).start()
    context = browser.new_context()
    try:
        alice = agents()
        page = context.new_page()
        page.goto(gateway.url + "/")
        page.get_by_label("Agent id").fill(alice)
        page.get_by_role("button", name="Sign in as this agent").click()
        page.locator('#connection[data-state="live"]').wait_for(timeout=15000)
        expect(page.locator("#agent-name")).to_contain_text(alice)
    finally:
        context.close()
        gateway.stop()


@pytest.fixture
def own_gateway(system):
    gateway = Gateway("gateway-restart").start()
    yield gateway
    gateway.stop()


def test_a_stream_the_browser_gave_up_on_is_reopened_and_misses_nothing(
        console, agents, put_up, own_gateway):
    # Given Alice's console on a gateway of its own, before any notification reached her
    alice = agents()
    at_alice = console(alice, at=own_gateway)
    # When the gateway crashes and her stream is answered with an error while it is away (the
    # browser then gives up on the stream, and the console reconnects by itself, with no
    # position of its own to resume from)
    refused: list[str] = []

    def refuse(route: Any) -> None:
        refused.append(route.request.url)
        route.fulfill(status=503, content_type="application/json", body='{"detail": "away"}')

    at_alice.page.route("**/agents/*/events?*", refuse)
    own_gateway.kill()
    expect(at_alice.page.locator("#connection")).to_have_attribute("data-state", "offline")
    # and a step is put up meanwhile
    during = put_up(popup=popup_settings())
    own_gateway.start()
    at_alice.page.unroute("**/agents/*/events?*", refuse)
    # Then her console shows it once it is back, then what comes next, each once
    expect(at_alice.popup(during["execution_id"])).to_be_visible(timeout=20000)
    at_alice.wait_live()
    after = put_up(popup=popup_settings())
    expect(at_alice.popup(after["execution_id"])).to_be_visible()
    expect(at_alice.page.locator('[role="dialog"]')).to_have_count(2)
    assert refused


@pytest.mark.parametrize("how", ["restart", "crash"])
def test_gateway_restarted_mid_stream_the_page_reconnects_and_misses_nothing(
        console, agents, put_up, own_gateway, how):
    # Given Alice's console on a gateway of its own
    alice = agents()
    at_alice = console(alice, at=own_gateway)
    before = None
    if how == "restart":
        # (she has seen one notification, so the browser has a real Last-Event-ID)
        before = put_up(popup=popup_settings())
        expect(at_alice.popup(before["execution_id"])).to_be_visible()
    # When the gateway goes away (a clean restart, or a crash before she saw anything)
    if how == "restart":
        own_gateway.stop()
    else:
        own_gateway.kill()
    expect(at_alice.page.locator("#connection")).not_to_have_attribute("data-state", "live")
    # and a step is put up while it is down
    during = put_up(popup=popup_settings())
    own_gateway.start()
    # Then the page reconnects and gets what it missed, then what comes next
    expect(at_alice.popup(during["execution_id"])).to_be_visible(timeout=20000)
    at_alice.wait_live()
    after = put_up(popup=popup_settings())
    expect(at_alice.popup(after["execution_id"])).to_be_visible()
    # And nothing twice
    expected = [s["execution_id"] for s in (before, during, after) if s]
    popups = at_alice.page.locator('[role="dialog"]')
    expect(popups).to_have_count(len(expected))
    assert [p.get_attribute("data-execution-id") for p in popups.all()] == expected
    seen = at_alice.page.evaluate("window.hitlConsole.seen")
    assert seen == [f"requested:{eid}" for eid in expected]
    entries = at_alice.page.locator("#bell-list li")
    expect(entries).to_have_count(len(expected))


@pytest.fixture
def api_as(gateway):
    import httpx

    clients: list[httpx.Client] = []

    def make(agent_id: str) -> httpx.Client:
        client = httpx.Client(base_url=gateway.url, headers=bearer(agent_id), timeout=30)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def test_an_offer_withdrawn_while_the_step_waits_comes_back_when_the_agent_can_take_it(
        console, agents, put_up, client):
    # Given a step that follows eligibility (it sets a priority), offered to Alice
    alice = agents()
    at_alice = console(alice)
    step = put_up(popup=popup_settings(), priority=5)
    expect(at_alice.bell_entry(step["execution_id"])).to_be_visible()
    # When she goes busy, her offer is withdrawn (the step still waits)
    client.call("hitl.set_agent_status", agent_id=alice, status="busy")
    expect(at_alice.bell_entry(step["execution_id"])).to_have_count(0)
    expect(at_alice.popup(step["execution_id"])).to_have_count(0)
    # And when she is available again, the step is offered to her again, popup and all
    client.call("hitl.set_agent_status", agent_id=alice, status="available")
    expect(at_alice.bell_entry(step["execution_id"])).to_be_visible()
    expect(at_alice.popup(step["execution_id"])).to_be_visible()
