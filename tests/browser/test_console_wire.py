"""The console trusts nothing on the wire (issue 9.7), and shows the popup of a request made
before its page opened (issue 11.7). Real Chromium, real gateway, workers and Redis."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest
import redis

from hitl_workers.notify.streams import stream_key
from tests.browser.test_console import ACTIVE_CONTENT, popup_settings

try:
    from playwright.sync_api import expect
except ImportError:  # the `browser` fixture fails with how to install it
    expect = None

pytestmark = pytest.mark.browser

INJECTED_HTML = (
    '<meta http-equiv="refresh" content="0;url=about:blank">'
    "<p>Plain <strong>words</strong> stay</p>"
    "<script>window.__pwned = 'script'</script>"
    "<img src=x onerror=\"window.__pwned = 'img'\">"
    "<svg><animate onbegin=\"window.__pwned = 'svg'\" attributeName=x dur=1s></animate></svg>"
    '<a href="javascript:window.__pwned=\'link\'">a link</a>'
    '<a href="/?token=someone-elses">same-origin link</a>'
    '<base href="https://evil.example/">'
    '<form action="https://evil.example/"><button>send</button></form>'
    '<iframe srcdoc="<script>parent.__pwned = \'iframe\'</script>"></iframe>'
    '<object data="javascript:window.__pwned=\'object\'"></object>'
    '<style>body { display: none }</style>'
    '<details open ontoggle="window.__pwned = \'details\'"><summary>x</summary></details>'
)


def injected_request(execution_id: str) -> dict[str, Any]:
    now_ms = int(time.time() * 1000)
    return {
        "type": "assistance.requested", "id": f"requested:{execution_id}",
        "execution_id": execution_id, "conversation_id": "conv-injected",
        "contact": {"name": "Mallory"}, "browser_notification": False,
        "popup": {"text": "plain", "html": INJECTED_HTML,
                  "buttons": [{"action": "close", "label": "Later"}],
                  "display_until_ms": now_ms + 60_000, "countdown_until_ms": None,
                  "timers": []},
    }


def test_html_written_straight_to_the_stream_is_sanitized_before_the_console_sees_it(
        console, agents, redis_urls):
    # Given Alice's console is open
    alice = agents()
    at_alice = console(alice)
    url = at_alice.page.url
    # When someone with write access to Redis puts hostile HTML on her stream directly
    client = redis.Redis.from_url(redis_urls["redis"], decode_responses=True)
    client.xadd(stream_key(alice), {"event": json.dumps(injected_request("exec-injected"))})
    # Then the popup shows the harmless part
    dialog = at_alice.popup("exec-injected")
    expect(dialog).to_be_visible()
    expect(dialog.locator(".popup-text strong")).to_have_text("words")
    at_alice.page.wait_for_timeout(2000)  # a refresh of 0 s would have fired by now
    # And the console stayed where it was, and nothing ran
    assert at_alice.page.url == url
    assert at_alice.page.evaluate("window.__pwned") is None
    assert at_alice.dialogs == [] and at_alice.errors == []
    expect(dialog).to_be_visible()
    # And the popup's HTML holds nothing active, no meta/base/form, no same-origin link
    text = dialog.locator(".popup-text")
    assert text.evaluate(ACTIVE_CONTENT) == []
    for tag in ("meta", "base", "form", "iframe", "object", "details", "style", "script"):
        assert text.locator(tag).count() == 0, tag
    hrefs = [a.get_attribute("href") for a in text.locator("a").all()]
    assert all(h is None or h.startswith(("http:", "https:", "mailto:", "tel:"))
               for h in hrefs), hrefs


def countdown_s(locator: Any) -> int:
    minutes, seconds = re.fullmatch(r"(\d+):(\d\d)", locator.inner_text().strip()).groups()
    return int(minutes) * 60 + int(seconds)


def test_a_request_made_before_the_page_opened_shows_its_popup_once(console, agents, put_up):
    # Given a step waiting for 5 s already, with a 90 s countdown, before Alice opens the page
    alice = agents()
    step = put_up(popup=popup_settings(timer={"auto_action_timeout": "90s"}))
    expired = put_up(popup=popup_settings(display_for="1s"))
    time.sleep(5)
    # When she opens the console
    at_alice = console(alice)
    eid = step["execution_id"]
    # Then its popup shows, as if it had just arrived, with the countdown that is left
    dialog = at_alice.popup(eid)
    expect(dialog).to_be_visible()
    expect(dialog.locator(".popup-text strong")).to_have_text("VIP")
    expect(dialog.get_by_role("button", name="Take it")).to_be_visible()
    left = countdown_s(dialog.locator(".countdown"))
    assert 70 <= left <= 86, left
    # A popup whose display time is over does not come back; its bell entry does show
    expect(at_alice.bell_entry(expired["execution_id"])).to_be_visible()
    expect(at_alice.popup(expired["execution_id"])).to_have_count(0)
    expect(at_alice.page.locator('[role="dialog"]')).to_have_count(1)
    # And once dismissed, it stays away when the bell list is reloaded (every 15 s)
    dialog.get_by_role("button", name="Later").click()
    expect(dialog).to_have_count(0)
    at_alice.page.wait_for_timeout(16_500)
    expect(at_alice.bell_entry(eid)).to_be_visible()
    expect(at_alice.popup(eid)).to_have_count(0)
