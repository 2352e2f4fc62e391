"""The one training path: every run is created by `create_run`, prepared, loaded and fit
the same way, and a campaign gets what a single run gets (the GPU guard among them)."""

import json
from pathlib import Path

import pytest

from backpropagate_core.errors import BackpropError
from backpropagate_core.hardware import gpu
from backpropagate_core.runs import events as ev
from backpropagate_core.runs.layout import RunDir
from backpropagate_core.runs.store import RunStore
from backpropagate_core.training import multirun, speed
from backpropagate_core.api import Trainer
from backpropagate_core.training.pipeline import prepare
from backpropagate_core.training.request import create_run
from backpropagate_core.training.run_config import build_config

FAST = dict(precision="fp32", batch_size=4, grad_accum=1, learning_rate=5e-3, max_seq_len=64,
            report_to="none")


def write_chat(path: Path, n: int, prompt: str = "Question {i}?") -> Path:
    rows = [{"messages": [{"role": "user", "content": prompt.format(i=i)},
                          {"role": "assistant", "content": f"Answer {i}."}]} for i in range(n)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_a_campaign_too_big_for_its_data_is_refused_before_any_row(tiny_llama, tmp_path):
    store = RunStore()
    data = write_chat(tmp_path / "small.jsonl", 12)
    with pytest.raises(BackpropError) as err:
        create_run(store, str(tiny_llama), data, overrides=FAST,
                   campaign=dict(num_runs=5, steps_per_run=2, samples_per_run=1000))
    assert err.value.code == "CONFIG_INVALID" and "12 examples" in err.value.message
    with pytest.raises(BackpropError) as err:
        create_run(store, str(tiny_llama), data, campaign=dict(num_runs=0, steps_per_run=2, samples_per_run=4))
    assert err.value.code == "CONFIG_INVALID"
    assert store.list() == [] and not any(store.runs_dir.iterdir())


def test_bad_requests_leave_nothing_behind(tiny_llama, tmp_path):
    store = RunStore()
    data = write_chat(tmp_path / "d.jsonl", 4)
    cases = [(dict(model=str(tiny_llama), data=tmp_path / "missing.jsonl"), "INPUT_DATASET_NOT_FOUND"),
             (dict(model="no-such-preset-or-folder", data=data), "INPUT_MODEL_NOT_FOUND"),
             (dict(model=str(tiny_llama), data=data, overrides={"steps": 0, "lora_rank": 3}), "CONFIG_INVALID")]
    for kwargs, code in cases:
        with pytest.raises(BackpropError) as err:
            create_run(store, **kwargs)
        assert err.value.code == code
    assert store.list() == []


def test_the_gpu_guard_pauses_a_campaign(tiny_llama, tmp_path, monkeypatch):
    """The campaign trains inside the same hardware sampler as a single run: a hot card
    pauses it between steps and it carries on once cool."""
    readings = iter([93.0] * 3)
    monkeypatch.setattr(gpu, "default_reader",
                        lambda: lambda: {"device": "cuda:0", "gpu_temp_c": next(readings, 70.0)})
    monkeypatch.setenv("BACKPROPAGATE_GPU__INTERVAL_S", "0.05")
    data = write_chat(tmp_path / "d.jsonl", 12)
    result = Trainer(str(tiny_llama), **FAST).multi_run(data, num_runs=2, steps_per_run=2,
                                                        samples_per_run=6, val_per_chunk=2)
    assert result.status == "completed"
    guard = [e for _, e in RunStore().events(result.run_id, types=("gpu_guard",))]
    assert [e["action"] for e in guard[:2]] == ["pause", "resume"]
    steps = [e for _, e in RunStore().events(result.run_id, types=("step",))]
    # Training waited: no step finished while the card was hot.
    assert steps and all(e["ts"] > guard[1]["ts"] for e in steps)


def test_a_nan_loss_fails_with_its_code_and_step(tiny_llama, tmp_path, monkeypatch):
    real = speed.labelled_loss
    monkeypatch.setattr(speed, "labelled_loss", lambda *a, **k: real(*a, **k) * float("nan"))
    data = write_chat(tmp_path / "d.jsonl", 8)
    with pytest.raises(BackpropError) as err:
        Trainer(str(tiny_llama), **FAST).train(data, steps=6, val_fraction=0.0, save_steps=1)
    assert err.value.code == "RUNTIME_LOSS_NONFINITE" and "at step 1" in err.value.message
    assert "learning rate" in err.value.hint
    (run,) = RunStore().list()
    assert run.status == "failed" and run.error_code == "RUNTIME_LOSS_NONFINITE"
    assert not list(RunDir(run.run_dir).checkpoints.glob("checkpoint-*"))  # NaN weights are not kept


def test_examples_cut_to_nothing_are_counted_and_reported(tiny_llama, tmp_path):
    long_prompt = "Please think about question {i}. " + "filler words " * 60
    data = tmp_path / "mixed.jsonl"
    write_chat(data, 6)
    with data.open("a") as fh:
        fh.write(write_chat(tmp_path / "long.jsonl", 3, long_prompt).read_text())
    lines: list[str] = []
    config = build_config(str(tiny_llama), str(data), max_seq_len=32, val_fraction=0.0)
    prep = prepare(config, lambda msg, level="INFO": lines.append(msg))
    assert prep.dropped == 3 and len(prep.train_rows) == 6
    assert any("3 example(s) left out" in line for line in lines)

    run = create_run(RunStore(), str(tiny_llama), data,
                     overrides={**FAST, "max_seq_len": 32, "steps": 1, "val_fraction": 0.0})
    multirun.execute(run.id, RunStore())
    started = [e for _, e in RunStore().events(run.id, types=("run_started",))]
    assert started[0]["dropped_examples"] == 3


def test_every_event_type_is_declared_in_events():
    """Events are plain dataclasses declared in one module, each with its own type name."""
    declared = {cls for cls in vars(ev).values()
                if isinstance(cls, type) and issubclass(cls, ev.Event) and cls is not ev.Event}
    assert declared and all(cls(run_id="r", **_required(cls)).type for cls in declared)
    assert len({cls(run_id="r", **_required(cls)).type for cls in declared}) == len(declared)


def _required(cls) -> dict:
    from dataclasses import MISSING, fields

    return {f.name: None for f in fields(cls)
            if f.default is MISSING and f.default_factory is MISSING and f.name != "run_id"}


def test_a_campaign_without_samples_shares_the_dataset_out(tiny_llama, tmp_path):
    """The built-in example has 35 examples: Start with the defaults must not need 5 x 1000."""
    data = write_chat(tmp_path / "d.jsonl", 35)
    run = create_run(RunStore(), str(tiny_llama), data, overrides=FAST,
                     campaign=dict(num_runs=5, steps_per_run=2))
    assert run.config["campaign"]["samples_per_run"] == 7
