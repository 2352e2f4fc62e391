"""Start and stop `backprop ui` in prod mode for tests and benchmarks, and chromium's flags.

One server per caller, with its own run store, output folder, Reflex build folder and
state folder under the given directory, so it neither sees nor disturbs anyone else's
runs or a `make run` in the same checkout.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
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
    root.mkdir(parents=True, exist_ok=True)
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
    from backpropagate_core.runs.store import RunStore

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
