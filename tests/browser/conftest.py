"""Headless Chromium (Debian's ``chromium``) driven by Playwright, against a real gateway,
real workers, PostgreSQL and Redis.

Install once (see tests/browser/test_console.py): ``apt-get install -y chromium`` and
``pip install -e '.[browser]'``. Never ``playwright install``: the suite uses the system
Chromium through ``executable_path``. Missing either is a failure, not a skip.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.gateway.harness import Gateway, gateway_fixture, make_token

CHROMIUM = os.environ.get("HITL_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
INSTALL = ("install them with `apt-get install -y chromium` and "
           "`pip install -e '.[browser]'` (never `playwright install`)")


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        pytest.fail(f"the playwright package is missing ({exc}); {INSTALL}", pytrace=False)
    if not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
        pytest.fail(f"Chromium is not at {CHROMIUM}; {INSTALL}", pytrace=False)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def gateway(system: Any) -> Iterator[Gateway]:
    yield from gateway_fixture(system, "gateway-browser")


class Console:
    """One agent's console in a browser context of its own (its own sessionStorage)."""

    def __init__(self, context: Any, page: Any, agent_id: str) -> None:
        self.context, self.page, self.agent_id = context, page, agent_id
        self.dialogs: list[str] = []  # alert/confirm/prompt: hostile content must never open one
        self.errors: list[str] = []
        page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        page.on("pageerror", lambda e: self.errors.append(str(e)))

    def popup(self, execution_id: str) -> Any:
        return self.page.locator(f'[role="dialog"][data-execution-id="{execution_id}"]')

    def bell_entry(self, execution_id: str) -> Any:
        return self.page.locator(f'#bell-list li[data-execution-id="{execution_id}"]')

    def notices(self) -> Any:
        return self.page.locator("#notices li")

    def wait_live(self, timeout_ms: int = 15000) -> None:
        self.page.locator('#connection[data-state="live"]').wait_for(timeout=timeout_ms)


@pytest.fixture
def console(browser: Any, gateway: Gateway) -> Iterator[Callable[..., Console]]:
    """``console(agent_id, gateway=…, init_script=…) -> Console``, signed in with /?token=."""
    contexts: list[Any] = []

    def open_console(agent_id: str, *, at: Gateway | None = None,
                     init_script: str | None = None) -> Console:
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        contexts.append(context)
        if init_script:
            context.add_init_script(init_script)
        page = context.new_page()
        page.set_default_timeout(15000)
        console = Console(context, page, agent_id)
        page.goto(f"{(at or gateway).url}/?token={make_token(agent_id)}")
        console.wait_live()
        return console

    yield open_console
    for context in contexts:
        context.close()


@pytest.fixture
def put_up(client: Any, flow: Any, team: str) -> Callable[..., dict[str, Any]]:
    """``put_up(**settings) -> request``: a step for this test's team, waiting."""
    from tests.support.steps import request

    def start(contact: dict[str, Any] | None = None, **settings: Any) -> dict[str, Any]:
        settings.setdefault("timeout", "5m")
        step = request(team, flow.reply_to, **settings)
        if contact is not None:
            step["conversation"]["contact"] = contact
        result = client.call("hitl.request_assistance", **step)
        assert result["state"] == "waiting", result
        return step

    return start
