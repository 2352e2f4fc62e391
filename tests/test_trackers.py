"""Experiment trackers: auto picks what is installed and opted into; TensorBoard writes
event files in the run folder."""

import json
from pathlib import Path

import pytest

from backpropagate_core.training import trackers
from backpropagate_core.errors import BackpropError
from backpropagate_core.api import Trainer


@pytest.fixture
def dataset(tmp_path) -> Path:
    rows = [{"messages": [{"role": "user", "content": f"Say {i}"},
                          {"role": "assistant", "content": f"{i} it is."}]} for i in range(8)]
    path = tmp_path / "say.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_auto_uses_installed_trackers_that_were_opted_into(monkeypatch):
    monkeypatch.setattr(trackers, "_installed", lambda name: True)
    for var in ("WANDB_API_KEY", "WANDB_MODE", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)
    assert trackers.resolve("auto") == ["tensorboard"]  # nothing is uploaded unasked
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "file:///tmp/mlruns")
    assert trackers.resolve("auto") == ["tensorboard", "wandb", "mlflow"]


def test_auto_skips_trackers_that_are_not_installed(monkeypatch):
    monkeypatch.setattr(trackers, "_installed", lambda name: name == "mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "file:///tmp/mlruns")
    assert trackers.resolve("auto") == ["mlflow"]


def test_named_trackers_are_checked(monkeypatch):
    monkeypatch.setattr(trackers, "_installed", lambda name: name != "wandb")
    assert trackers.resolve("none") == []
    assert trackers.resolve("TensorBoard, mlflow") == ["tensorboard", "mlflow"]
    with pytest.raises(BackpropError) as err:
        trackers.resolve("wandb")
    assert err.value.code == "DEP_MISSING"
    with pytest.raises(BackpropError) as err:
        trackers.resolve("neptune")
    assert err.value.code == "CONFIG_INVALID"


def _event_files(run_dir: Path) -> list[Path]:
    return list((run_dir / trackers.TENSORBOARD_DIR).rglob("events.out.tfevents.*"))


def test_tensorboard_writes_event_files_in_the_run_folder(tiny_llama, dataset):
    pytest.importorskip("tensorboard")
    result = Trainer(str(tiny_llama)).train(dataset, steps=3, val_fraction=0.0, report_to="tensorboard")
    files = _event_files(result.run_dir)
    assert files, "no TensorBoard event file"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(files[0].parent))
    acc.Reload()
    assert "train/loss" in acc.Tags()["scalars"]
    assert len(acc.Scalars("train/loss")) == 3
    assert not (result.run_dir / "checkpoints" / "runs").exists()  # not transformers' default place


def test_none_writes_no_tracker_files(tiny_llama, dataset):
    result = Trainer(str(tiny_llama)).train(dataset, steps=1, val_fraction=0.0, report_to="none")
    assert not (result.run_dir / trackers.TENSORBOARD_DIR).exists()
