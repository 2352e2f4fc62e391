"""Nothing leaves the machine: a real training run, the dataset report and `backprop info`
work with every outbound connection refused, and none is even attempted.

The guard (tests/netguard.py) is installed in this process and, as `sitecustomize.py` on
PYTHONPATH, in every Python process the engine starts. The hub "offline" variables the
test suite normally sets are removed here, so what is tested is the engine's own
behaviour with a local model, as a user would run it.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import tests.netguard as netguard
from backpropagate_core import privacy
from backpropagate_core.runs import worker
from backpropagate_core.runs.store import RunStore

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def guarded(tmp_path, monkeypatch) -> Path:
    """Arm the guard here and in child processes; yields the file attempts are written to."""
    site = tmp_path / "guard-site"
    site.mkdir()
    shutil.copy(ROOT / "tests" / "netguard.py", site / "sitecustomize.py")
    log = tmp_path / "net-attempts.jsonl"
    monkeypatch.setenv("BP_NET_GUARD_LOG", str(log))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    netguard.install(monkeypatch.setattr)
    return log


def attempts(log: Path) -> tuple[list[dict], set[int]]:
    rows = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
    return [r for r in rows if "blocked" in r], {r["pid"] for r in rows if r.get("armed")}


def test_guard_catches_a_connection_in_a_child_process(guarded):
    code = "import urllib.request; urllib.request.urlopen('http://example.com', timeout=2)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "privacy guard" in proc.stderr
    blocked, armed = attempts(guarded)
    assert blocked and blocked[0]["host"] == "example.com" and len(armed) == 2


def test_training_report_and_info_make_no_outbound_connection(guarded, tiny_llama, tmp_path):
    data = tmp_path / "chat.jsonl"
    data.write_text("\n".join(json.dumps({"messages": [
        {"role": "user", "content": f"What is {i} plus {i}?"},
        {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]}) for i in range(16)) + "\n")

    report = worker.dataset_report(str(data), model=str(tiny_llama))
    assert report.examples == 16 and report.format == "openai"

    store = RunStore()
    run_id = worker.start_run(str(tiny_llama), str(data),
                              overrides={"steps": 3, "save_steps": 2, "val_fraction": 0.0})
    deadline = time.time() + 300
    while store.get(run_id).status in ("queued", "running") and time.time() < deadline:
        time.sleep(0.5)
        store.reap_dead()
    run = store.get(run_id)
    assert run.status == "completed", (run.error_code, run.error_message,
                                       (run.run_dir / "worker.log").read_text()[-3000:])

    from backpropagate_core.cli.app import main as cli_main
    assert cli_main(["info", "--json"]) == 0

    blocked, armed = attempts(guarded)
    assert blocked == [], blocked
    assert len(armed) >= 3  # this process, the engine helper and the training worker
    # The worker names its run first, before any engine work starts.
    first = (run.run_dir / "worker.log").read_text().splitlines()[0]
    assert "run_started" in first and run_id in first


def test_telemetry_variables_are_set_on_import():
    code = ("import os, backpropagate_core; "
            "print(os.environ['HF_HUB_DISABLE_TELEMETRY'], os.environ['DO_NOT_TRACK'], "
            "os.environ['REFLEX_TELEMETRY_ENABLED'], os.environ['UNSLOTH_DISABLE_STATISTICS'])")
    env = {k: v for k, v in os.environ.items() if k not in privacy.TELEMETRY_OFF}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=60)
    assert out.stdout.split() == ["1", "1", "false", "1"], out.stderr


def test_huggingface_hub_sees_telemetry_off():
    code = "import backpropagate_core, huggingface_hub.constants as c; print(c.HF_HUB_DISABLE_TELEMETRY)"
    env = {k: v for k, v in os.environ.items() if k not in privacy.TELEMETRY_OFF}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=60)
    assert out.stdout.strip() == "True", out.stderr


def test_reflex_config_turns_telemetry_off():
    text = (ROOT / "rxconfig.py").read_text()
    assert "telemetry_enabled=False" in text


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_web_app_starts_and_serves_pages_without_outbound_connections(guarded, tmp_path):
    """The Reflex server (what `backprop ui` runs, with its env and command) under the guard.

    It runs on a copy of the app so its build folder (.web) never touches the checkout.
    The frontend build tools (bun) are native programs the guard cannot see."""
    import signal
    import urllib.request

    pytest.importorskip("reflex")
    from backpropagate_core.cli import ui as ui_cli

    env = ui_cli.ui_env(dict(os.environ))
    if not shutil.which("bun", path=env.get("PATH")):
        pytest.skip("bun is not installed (make install puts it under .tools/)")
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    for name in ("rxconfig.py", "backpropagate_app", "assets", "reflex.lock"):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, app_dir / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.is_file():
            shutil.copy(src, app_dir / name)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(ui_cli.reflex_command("127.0.0.1", port), cwd=app_dir, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        assert ui_cli.wait_ready(url, proc, 600), proc.stdout.read().decode(errors="replace")[-3000:]
        for path in ("/", "/ping"):
            with urllib.request.urlopen(url + path, timeout=30) as resp:
                assert resp.status == 200
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    blocked, armed = attempts(guarded)
    assert blocked == [], blocked
    assert len(armed) >= 2  # this process and the Reflex server
