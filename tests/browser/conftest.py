"""The app in prod mode on a free loopback port, and Debian's chromium driven by Playwright.

One server per test session (`backprop ui --port P`), with its own run store, output
folder, Reflex build folder and state folder under a temporary directory, so it neither
sees nor disturbs anyone else's runs or a `make run` in the same checkout. The default
model is a tiny random Llama, so training takes seconds.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
SCREENSHOTS = REPO / "test-artifacts" / "screenshots"
START_TIMEOUT_S = 600


@dataclass
class Server:
    url: str
    home: Path
    outputs: Path
    model: Path
    log: Path
    proc: subprocess.Popen


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(root: Path, model: Path, port: int | None = None, extra_env: dict | None = None) -> Server:
    """Run `backprop ui` in its own process group and wait until /ping answers."""
    port = port or free_port()
    home, outputs = root / "home", root / "outputs"
    env = {**os.environ,
           "BACKPROPAGATE_HOME": str(home), "BACKPROPAGATE_UI__OUTPUT_DIR": str(outputs),
           "BACKPROPAGATE_MODEL": str(model),
           "REFLEX_WEB_WORKDIR": str(root / "web"), "REFLEX_STATES_WORKDIR": str(root / "states"),
           **(extra_env or {})}
    log = root / f"server-{port}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "backpropagate_core.cli.run", "ui", "--port", str(port)],
                                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"backprop ui exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/ping", timeout=2):
                return Server(url, home, outputs, model, log, proc)
        except OSError:
            time.sleep(0.5)
    stop_server(proc)
    raise RuntimeError(f"backprop ui did not answer within {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


def stop_server(proc: subprocess.Popen) -> None:
    """Stop the whole process group (backprop ui, reflex, its server workers)."""
    for sig, wait in ((signal.SIGINT, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        # The group may outlive its leader for a moment.
        time.sleep(0.5)


def stop_workers(home: Path) -> None:
    """Training workers run in sessions of their own; stop any a test left running."""
    from backpropagate_core.runs import RunStore

    store = RunStore(home)
    for run in store.list():
        if run.active:
            (run.run_dir / "CANCEL").touch()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(r.active for r in store.list()):
        time.sleep(0.5)
    for run in store.list():
        if run.active and run.pid:
            try:
                os.kill(run.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture(scope="session")
def server(tmp_path_factory, tiny_llama) -> Server:
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed (make browser)")
    root = tmp_path_factory.mktemp("ui-server")
    srv = start_server(root, tiny_llama)
    yield srv
    stop_workers(srv.home)
    stop_server(srv.proc)


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, base_url=server.url)
    context.set_default_timeout(30_000)
    pg = context.new_page()
    yield pg
    context.close()


def screenshot(page, name: str) -> Path:
    """Save a full-page screenshot under test-artifacts/screenshots/ (look at them)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def copy_dataset(src: Path, dest_dir: Path, name: str) -> Path:
    dest_dir.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(src, dest_dir / name))
