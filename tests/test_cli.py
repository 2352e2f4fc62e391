"""The `backprop` CLI: exit codes, coded messages, run listing."""

import json
import subprocess
import sys

from backpropagate_core.cli.app import main
from tests.test_train import write_dataset


def test_help_is_fast_and_lists_commands():
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "backpropagate_core.cli.run", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for cmd in ("train", "resume", "list-runs", "show-run", "info", "data"):
        assert cmd in out.stdout
    imported = out.stderr
    assert "torch" not in {line.split("|")[-1].strip().split(".")[0] for line in imported.splitlines()}


def test_missing_dataset_exits_1_with_code(capsys, tmp_path):
    assert main(["train", "--data", str(tmp_path / "nope.jsonl")]) == 1
    assert "[INPUT_DATASET_NOT_FOUND]" in capsys.readouterr().err


def test_usage_error_exits_2(capsys):
    assert main(["train", "--no-such-flag"]) == 2


def test_train_then_list_and_show(tiny_llama, tmp_path, capsys):
    data = write_dataset(tmp_path / "facts.jsonl")
    assert main(["train", "--data", str(data), "--model", str(tiny_llama), "--steps", "3"]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("run_started run_id=")
    assert main(["list-runs", "--json"]) == 0
    runs = json.loads(capsys.readouterr().out)
    assert len(runs) == 1 and runs[0]["status"] == "completed"
    assert main(["show-run", runs[0]["id"][:6], "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["id"] == runs[0]["id"] and shown["events"]
    assert main(["list-runs", "--status", "failed", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_error_codes_catalog_printed(capsys):
    assert main(["info", "--error-codes", "--json"]) == 0
    codes = json.loads(capsys.readouterr().out)
    assert "INPUT_DATASET_INVALID" in codes and codes["RUNTIME_WORKER_DIED"]["retryable"]


def test_unexpected_errors_have_no_traceback_without_verbose(capsys, monkeypatch):
    import backpropagate_core.cli.runs as runs_cli

    def boom(*a, **k):
        raise RuntimeError("kaboom")

    monkeypatch.setattr("backpropagate_core.runs.store.RunStore.list", boom)
    assert main(["list-runs"]) == 3
    err = capsys.readouterr().err
    assert "[RUNTIME_UNEXPECTED]" in err and "Traceback" not in err
