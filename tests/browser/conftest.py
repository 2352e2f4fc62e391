"""Fixtures for the browser tests: the app in prod mode on a free loopback port (see
`harness.py`) with a tiny random Llama as its default model, and Debian's chromium driven
by Playwright. Screenshots go to test-artifacts/screenshots/."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

# Re-exported: the security tests import these from here.
from tests.browser.harness import (CHROMIUM, CHROMIUM_ARGS, REPO, Server, free_port,  # noqa: F401
                                   start_server, stop_server, stop_workers)

SCREENSHOTS = REPO / "test-artifacts" / "screenshots"


@pytest.fixture(scope="package")
def ui_root() -> Path:
    """A folder of our own rather than pytest's numbered tmp dirs: other pytest sessions
    running at the same time prune those, and this one lives for the whole session."""
    root = Path(tempfile.mkdtemp(prefix="bp-ui-test-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="package")
def server(ui_root) -> Server:
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed (make browser)")
    from tests.tiny import build_model

    model = build_model(ui_root / "tiny-llama", arch="llama")
    srv = start_server(ui_root / "server", model)
    yield srv
    stop_workers(srv.home)
    stop_server(srv.proc)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


# Package scope: Playwright's sync API keeps an event loop running in the main thread
# until it stops, which would break later tests that use asyncio or their own Playwright.
@pytest.fixture(scope="package")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(request, browser, server):
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, base_url=server.url)
    context.set_default_timeout(30_000)
    pg = context.new_page()
    yield pg
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        screenshot(pg, f"FAILED-{request.node.name}")
        print(f"--- server log tail ---\n{server.log.read_text(errors='replace')[-4000:]}")
    context.close()


def screenshot(page, name: str) -> Path:
    """Save a full-page screenshot under test-artifacts/screenshots/ (look at them)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
