"""One real `backprop ui --auth` server for the attack suite and the login browser test.

It runs in prod mode on a free loopback port with its own run store, output folder,
Reflex build and state folders under a temporary directory, a known JWT key (so tests
can forge tokens signed with the right key too) and a 2 MB upload limit (so oversized
uploads are quick to send).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.browser.conftest import REPO, free_port, stop_server, stop_workers

USER = "admin"
PASSWORD = "attack-suite-pass-2026"
JWT_SECRET = "test-only-jwt-key-0123456789abcdefghijklmnop"
START_TIMEOUT_S = 600


@dataclass
class Secured:
    url: str
    port: int
    root: Path
    home: Path
    outputs: Path
    outside: Path
    """A folder outside the sandbox holding a secret dataset the app must never read or write."""
    model: Path
    log: Path
    proc: subprocess.Popen

    @property
    def uploads(self) -> Path:
        return self.outputs / "uploads"


def wait_answering(url: str, proc: subprocess.Popen, log: Path) -> None:
    """Until the server answers anything (with the login on, /ping answers 401)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"backprop ui exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url + "/ping", timeout=2).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.5)
    stop_server(proc)
    raise RuntimeError(f"backprop ui did not answer within {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="package")
def secured() -> Secured:
    # A folder of our own: pytest prunes its numbered tmp folders when other sessions run
    # at the same time, which would pull the build and the model from under the server.
    from tests.tiny import build_model

    root = Path(tempfile.mkdtemp(prefix="bp-secured-ui-"))
    tiny_llama = build_model(root / "tiny-llama", arch="llama")
    home, outputs, outside = root / "home", root / "outputs", root / "outside"
    outside.mkdir()
    (outside / "secret.jsonl").write_text(
        '{"messages": [{"role": "user", "content": "TOPSECRET-7f3a"}, {"role": "assistant", "content": "x"}]}\n')
    port = free_port()
    env = {**os.environ,
           "BACKPROPAGATE_HOME": str(home), "BACKPROPAGATE_UI__OUTPUT_DIR": str(outputs),
           "BACKPROPAGATE_MODEL": str(tiny_llama), "BACKPROPAGATE_UI__MAX_UPLOAD_MB": "2",
           "BACKPROPAGATE_UI_USER": USER, "BACKPROPAGATE_UI_PASSWORD": PASSWORD,
           "BACKPROPAGATE_SECURITY__JWT_SECRET": JWT_SECRET,
           "REFLEX_WEB_WORKDIR": str(root / "web"), "REFLEX_STATES_WORKDIR": str(root / "states")}
    log = root / "server.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "backpropagate_core.cli.run", "ui", "--port", str(port)],
                                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    wait_answering(url, proc, log)
    yield Secured(url, port, root, home, outputs, outside, tiny_llama, log, proc)
    stop_workers(home)
    stop_server(proc)
    shutil.rmtree(root, ignore_errors=True)
