"""The Windows branches, exercised by switching `sys.platform` (we have no Windows machine)."""

import ast
import multiprocessing
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from backpropagate_core import platform_support as ps

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def windows(monkeypatch):
    monkeypatch.setattr(sys, "platform", "win32")


def test_dataloader_runs_in_the_main_process_on_windows(windows):
    assert ps.is_windows()
    assert ps.dataloader_workers(4) == 0


def test_dataloader_workers_honoured_elsewhere(monkeypatch):
    monkeypatch.setattr(sys, "platform", "linux")
    assert ps.dataloader_workers(4) == 4 and ps.dataloader_workers() == 0


def test_no_sigterm_handler_on_windows(windows, monkeypatch):
    monkeypatch.setattr(signal, "SIGBREAK", 21, raising=False)
    assert signal.SIGTERM not in ps.stop_signals()
    assert ps.stop_signals() == [signal.SIGINT, 21]


def test_sigterm_stops_gracefully_on_posix(monkeypatch):
    monkeypatch.setattr(sys, "platform", "linux")
    assert ps.stop_signals() == [signal.SIGINT, signal.SIGTERM]


def test_worker_detaches_with_a_process_group_on_windows(windows):
    assert ps.worker_popen_kwargs() == {"creationflags": 0x00000200}


def test_worker_detaches_with_a_session_on_posix(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert ps.worker_popen_kwargs() == {"start_new_session": True}


@pytest.mark.parametrize("name, capability, expected", [
    ("NVIDIA GeForce RTX 4090", None, False),
    ("NVIDIA GeForce RTX 4060 Laptop GPU", None, False),
    ("NVIDIA GeForce RTX 5090", None, False),
    ("NVIDIA RTX PRO 6000 Blackwell Workstation Edition", None, False),
    ("NVIDIA L40S", None, False),
    ("NVIDIA GeForce RTX 3090", (8, 6), True),
    ("NVIDIA A100-SXM4-80GB", (8, 0), True),
    ("Tesla T4", (7, 5), True),
    ("Some Future Card", (12, 0), False),
    ("NVIDIA RTX 4000 Ada Generation", (8, 9), False),
    (None, None, False),
])
def test_xformers_off_on_rtx_40_and_50(name, capability, expected):
    assert ps.use_xformers(name, capability) is expected


def test_hidden_xformers_cannot_be_imported(monkeypatch):
    monkeypatch.setitem(sys.modules, "xformers", None)
    ps.hide_xformers()
    with pytest.raises(ImportError):
        import xformers  # noqa: F401
    assert ps.configure_attention("cpu", None) is False


def test_replace_retries_while_windows_holds_the_file(windows, monkeypatch, tmp_path):
    calls = []

    def locked_twice(src, dst):
        calls.append(src)
        if len(calls) < 3:
            raise PermissionError(13, "The process cannot access the file")

    monkeypatch.setattr(ps.os, "replace", locked_twice)
    ps.replace(tmp_path / "a", tmp_path / "b", wait_s=0)
    assert len(calls) == 3


def test_replace_does_not_retry_on_posix(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "platform", "linux")

    def locked(src, dst):
        raise PermissionError(13, "denied")

    monkeypatch.setattr(ps.os, "replace", locked)
    with pytest.raises(PermissionError):
        ps.replace(tmp_path / "a", tmp_path / "b", wait_s=0)


def test_spawn_uses_the_platform_kwargs(windows, monkeypatch, tmp_path):
    """The launcher passes Windows creation flags, not POSIX sessions, to the worker."""
    from backpropagate_core.runs import worker
    from backpropagate_core.runs.store import RunStore

    seen = {}

    class FakePopen:
        pid = 12345

        def __init__(self, args, **kwargs):
            seen.update(kwargs, args=args)

        def poll(self):
            return 0

    monkeypatch.setattr(subprocess, "Popen", FakePopen)
    worker._spawn(["some-run"], RunStore(tmp_path / "home"), tmp_path / "worker.log")
    assert seen["creationflags"] == 0x00000200 and "start_new_session" not in seen
    assert seen["args"][1:3] == ["-m", "backpropagate_core.runs.worker"]


def test_worker_entry_point_is_spawn_safe():
    """`python -m backpropagate_core.runs.worker` re-imports cleanly: nothing runs at import and
    the call to main is behind a `__main__` guard."""
    source = (ROOT / "backpropagate_core" / "runs" / "worker.py").read_text()
    tree = ast.parse(source)
    top_calls = [n for n in tree.body if isinstance(n, ast.Expr) and isinstance(n.value, ast.Call)]
    assert not top_calls
    guard = tree.body[-1]
    assert isinstance(guard, ast.If) and "__main__" in ast.unparse(guard.test)
    out = subprocess.run([sys.executable, "-c", "import backpropagate_core.runs.worker as w; print(w.main.__name__)"],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.stdout.strip() == "main", out.stderr


def test_tokenization_happens_in_the_main_process(tiny_llama, tmp_path, monkeypatch):
    """Rows are tokenized before training, in this process: no worker processes are started
    (on Windows each would re-import torch)."""
    import json

    from backpropagate_core.training.pipeline import prepare
    from backpropagate_core.training.run_config import build_config

    def no_processes(self):
        raise AssertionError("a process was started during data preparation")

    monkeypatch.setattr(multiprocessing.Process, "start", no_processes)
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": f"q{i}", "completion": f"a{i}"}) for i in range(8)))
    prep = prepare(build_config(str(tiny_llama), str(data), val_fraction=0.0), lambda *a: None)
    assert prep.train_rows and all(isinstance(t, int) for t in prep.train_rows[0]["input_ids"])


def test_no_posix_only_calls_outside_platform_branches():
    """POSIX-only APIs (fork, kill with signals, os.setsid, fcntl) are not used by the engine."""
    banned = ("os.fork", "os.setsid", "os.killpg", "import fcntl", "signal.SIGKILL", "signal.alarm",
              "os.getuid", "preexec_fn")
    for path in (ROOT / "backpropagate_core").rglob("*.py"):
        text = path.read_text()
        for word in banned:
            assert word not in text, f"{path.name} uses {word}"
