"""The login in a real browser: chromium against `backprop ui --auth` (see conftest.py).

The login page appears, a wrong password is refused, the right one reaches the Train
page where a training run streams; signing out ends access, including the websocket the
open page is using. Screenshots land in test-artifacts/screenshots/.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS, screenshot
from tests.security.conftest import PASSWORD, USER
from tests.security.rawws import http, upgrade

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def chromium():
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed (make browser)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def sign_in(page, password: str) -> None:
    page.fill("#user", USER)
    page.fill("#password", password)
    page.click("button[type=submit]")


def test_login_train_and_logout_in_the_browser(chromium, secured):
    context = chromium.new_context(viewport={"width": 1400, "height": 1000}, base_url=secured.url)
    context.set_default_timeout(30_000)
    page = context.new_page()
    sockets = []
    page.on("websocket", lambda ws: sockets.append(ws))
    csp_errors = []
    page.on("console", lambda m: csp_errors.append(m.text) if "Content Security Policy" in m.text else None)

    # Any page sends a signed-out visitor to the login form, remembering where they were going.
    page.goto("/train")
    expect(page).to_have_url(f"{secured.url}/login?next=%2Ftrain", timeout=30_000)
    expect(page.locator("#password")).to_be_visible()
    screenshot(page, "login")

    sign_in(page, "not-the-password")
    expect(page.locator(".error")).to_have_text("Wrong user name or password.")
    assert not [c for c in context.cookies() if c["name"] == "bp_session"]
    screenshot(page, "login-refused")

    sign_in(page, PASSWORD)
    expect(page).to_have_url(f"{secured.url}/train/", timeout=30_000)
    cookie = next(c for c in context.cookies() if c["name"] == "bp_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"

    # The app works behind the gate: its websocket connects and a run streams.
    expect(page.get_by_test_id("custom-model")).to_be_visible(timeout=60_000)
    page.get_by_test_id("custom-model").fill(str(secured.model))
    page.get_by_test_id("custom-model").blur()
    expect(page.get_by_test_id("dataset-select")).to_contain_text("quickstart.jsonl", timeout=60_000)
    page.get_by_test_id("field-steps").fill("400")
    page.get_by_test_id("run-name").fill("behind-login")
    page.get_by_test_id("start").click()
    expect(page.get_by_test_id("run-status")).to_have_text("running", timeout=240_000)
    page.wait_for_function(
        "() => Number(document.querySelector('[data-testid=loss-chart]')?.dataset.points) >= 3", timeout=240_000)
    expect(page.get_by_test_id("sign-out")).to_be_visible(timeout=30_000)
    screenshot(page, "train-behind-login")
    live = [ws for ws in sockets if "/_event" in ws.url and not ws.is_closed()]
    assert live, "the page has no open websocket"
    assert csp_errors == []

    # Sign out from a second tab: the first tab's open websocket is closed by the server.
    other = context.new_page()
    other.goto("/runs")
    other.get_by_test_id("sign-out").click()
    expect(other).to_have_url(f"{secured.url}/login", timeout=30_000)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not all(ws.is_closed() for ws in live):
        page.wait_for_timeout(200)
    assert all(ws.is_closed() for ws in live), "logout left the open websocket running"

    # The old cookie is dead even if someone kept a copy; the pages ask for a login again.
    old = ("Cookie", f"bp_session={cookie['value']}")
    host = ("Host", f"127.0.0.1:{secured.port}")
    assert http(secured.port, "GET", "/_health", [host, old])[0] == 401
    status, ws = upgrade(secured.port, "/_event/?token=t&EIO=4&transport=websocket",
                         {"Host": host[1], "Origin": secured.url, "Cookie": old[1]})
    assert status == 403 and ws is None
    assert not [c for c in context.cookies() if c["name"] == "bp_session"]
    page.reload()
    expect(page).to_have_url(f"{secured.url}/login?next=%2Ftrain%2F", timeout=30_000)
    context.close()
