"""`backprop train --num-processes 2`: two CPU processes (gloo DDP through accelerate
launch) train one run; rank 0 alone writes it down."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from backpropagate_core.runs.store import RunStore

FACTS = [("What colour is the sky?", "The sky is blue."),
         ("What do bees make?", "Bees make honey."),
         ("What is frozen water?", "Frozen water is ice."),
         ("Where does bread rise?", "Bread rises in a warm place.")]


@pytest.fixture
def dataset(tmp_path) -> Path:
    rows = [{"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}
            for _ in range(6) for q, a in FACTS]
    path = tmp_path / "facts.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def backprop_train(home: Path, model: Path, data: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "BACKPROPAGATE_HOME": str(home), "BACKPROPAGATE_TRAINING__VAL_FRACTION": "0",
           "BACKPROPAGATE_TRAINING__REPORT_TO": "none", "BACKPROPAGATE_TRAINING__PRECISION": "fp32",
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "backpropagate_core.cli.run", "train", "--data", str(data),
           "--model", str(model), "--steps", "8", "--lr", "2e-2", "--grad-accum", "1", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def step_losses(home: Path) -> list[float]:
    store = RunStore(home)
    (run,) = store.list()
    return [e["loss"] for _, e in store.events(run.id, types=("step",))]


def test_two_processes_train_one_run_like_one_process(tiny_llama, dataset, tmp_path):
    home_two, home_one = tmp_path / "two", tmp_path / "one"
    two = backprop_train(home_two, tiny_llama, dataset, "--batch-size", "2", "--num-processes", "2")
    assert two.returncode == 0, two.stderr[-3000:]
    one = backprop_train(home_one, tiny_llama, dataset, "--batch-size", "4")
    assert one.returncode == 0, one.stderr[-3000:]

    runs = RunStore(home_two).list()
    assert len(runs) == 1  # the launcher recorded one run, not one per process
    run = runs[0]
    assert run.status == "completed" and run.step == 8
    # Both ranks stepped: rank 0 recorded every step, rank 1 reports its own finish.
    assert "rank 1: finished run" in two.stderr and "at step 8" in two.stderr
    events = [e["type"] for _, e in RunStore(home_two).events(run.id)]
    assert events.count("run_started") == 1 and events.count("finished") == 1 and events.count("step") == 8
    # Exactly one set of artifacts.
    assert sorted(p.name for p in run.run_dir.iterdir() if p.is_dir()) == ["adapter", "checkpoints"]
    assert not list(run.run_dir.rglob("*.partial"))
    # Two processes x batch 2 see the same examples per step as one process x batch 4.
    two_losses, one_losses = step_losses(home_two), step_losses(home_one)
    # With a high learning rate, replicas whose gradients were not all-reduced drift apart
    # within a few steps; synchronised ones follow the one-process run.
    print(f"2 processes: {two_losses}\n1 process:   {one_losses}")  # shown with pytest -s
    assert len(two_losses) == len(one_losses) == 8
    assert two_losses == pytest.approx(one_losses, rel=2e-3), (two_losses, one_losses)
