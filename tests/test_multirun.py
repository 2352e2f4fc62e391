"""Multi-run campaigns on a tiny model: the merged adapter is the result, forgetting is
measured, and a campaign killed part-way resumes to the same merged weights."""

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from backpropagate_core.training import multirun
from backpropagate_core.runs import worker
from backpropagate_core.runs import events as ev
from backpropagate_core.training.campaign_state import (average_forgetting, campaign_settings, read_state,
                                                        replay_rows, split_chunks)
from backpropagate_core.training.pipeline import Part
from backpropagate_core.data.formats import Example
from backpropagate_core.errors import BackpropError
from backpropagate_core.runs.store import RunStore
from backpropagate_core.api import Trainer
from backpropagate_core.training.run_config import build_config

TASKS = {
    "sum": lambda k: (f"What is {k} plus {k + 1}?", f"{2 * k + 1}."),
    "capital": lambda k: (f"Which city is capital number {k}?", "Paris is the capital of France."),
    "bread": lambda k: (f"Bread step {k}?", "Knead the dough and let it rise."),
}
# Small enough for a CPU in seconds; long enough per run that a kill after run 1 lands
# before run 3 ends.
CAMPAIGN = dict(num_runs=3, steps_per_run=6, samples_per_run=10, val_per_chunk=3)
TRAINING = dict(precision="fp32", batch_size=4, grad_accum=1, learning_rate=5e-3, max_seq_len=64)


def write_tasks(path: Path, per_task: int = 10) -> Path:
    rows = [{"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}
            for make in TASKS.values() for q, a in map(make, range(per_task))]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def wait_for(predicate, timeout=240, interval=0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if value := predicate():
            return value
        time.sleep(interval)
    raise AssertionError("timed out waiting")


@pytest.fixture(scope="module")
def campaign(tiny_llama, tmp_path_factory):
    """One uninterrupted 3-run SLAO campaign, shared by the tests that only read it."""
    root = tmp_path_factory.mktemp("campaign")
    data = write_tasks(root / "tasks.jsonl")
    trainer = Trainer(str(tiny_llama), home=root / "home", **TRAINING)
    result = trainer.multi_run(data, **CAMPAIGN)
    return trainer, result, data


def test_campaign_completes_as_one_multi_run(campaign):
    trainer, result, _ = campaign
    run = trainer.store.get(result.run_id)
    assert (run.kind, run.status, run.step, run.total_steps) == ("multi_run", "completed", 18, 18)
    assert run.summary["timeline"] == ["done", "done", "done"]
    events = [e for _, e in trainer.store.events(result.run_id)]
    types = [e["type"] for e in events]
    assert types.count("campaign_run_started") == 3 and types.count("merge") == 3
    assert types.count("forgetting") == 3 and types[-1] == "finished"
    # One continuous loss curve across runs, with merge points marked.
    assert [e["step"] for e in events if e["type"] == "step"] == list(range(1, 19))
    assert [e["step"] for e in events if e["type"] == "merge"] == [6, 12, 18]
    assert [e["first_step"] for e in events if e["type"] == "campaign_run_started"] == [0, 6, 12]


def test_forgetting_matrix_is_run_by_chunk(campaign):
    trainer, result, _ = campaign
    matrix = result.forgetting
    assert len(matrix) == 3 and all(len(row) == 3 for row in matrix)
    for i, row in enumerate(matrix):
        assert all(x is not None and x > 0 for x in row[:i + 1])
        assert all(x is None for x in row[i + 1:])
    expected = ((matrix[2][0] - matrix[0][0]) + (matrix[2][1] - matrix[1][1])) / 2
    assert result.avg_forgetting == pytest.approx(expected)
    summary = trainer.store.get(result.run_id).summary
    assert summary["forgetting"] == matrix and summary["avg_forgetting"] == pytest.approx(expected)
    assert summary["lambdas"] == pytest.approx([1.0, 2 ** -0.5, 3 ** -0.5])


def test_merged_adapter_is_saved_exported_and_reloads(campaign, tiny_llama, monkeypatch, tmp_path):
    from peft import PeftModel, get_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    trainer, result, _ = campaign
    state_dir = result.run_dir / "campaign"
    merged = load_file(state_dir / read_state(result.run_dir).merged_file)
    last_run = load_file(state_dir / "run-3.safetensors")
    saved = load_file(result.adapter_path / "adapter_model.safetensors")
    b_keys = [k for k in merged if "lora_B" in k]
    assert any(not torch.equal(merged[k], last_run[k]) for k in b_keys), "merge changed nothing"
    manifest = json.loads((result.adapter_path / "backpropagate.json").read_text())
    assert manifest["run_id"] == result.run_id and manifest["model"] == str(tiny_llama)

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), result.adapter_path)
    reloaded = get_peft_model_state_dict(model)
    assert reloaded.keys() == merged.keys() == saved.keys()
    for key in merged:
        assert torch.equal(reloaded[key], merged[key]) and torch.equal(saved[key], merged[key])

    trainer.save(tmp_path / "copy")
    assert torch.equal(load_file(tmp_path / "copy" / "adapter_model.safetensors")[b_keys[0]], merged[b_keys[0]])
    from backpropagate_core.export import export_model

    monkeypatch.setenv("BACKPROPAGATE_HOME", str(trainer.store.home))
    exported = export_model(result.run_id, format="adapter", output_dir=tmp_path / "export")
    assert torch.equal(load_file(exported.path / "adapter_model.safetensors")[b_keys[0]], merged[b_keys[0]])


def test_resume_after_kill_reproduces_the_uninterrupted_merge(campaign, tiny_llama):
    _, reference, data = campaign
    store = RunStore()
    run_id = worker.start_multi_run(str(tiny_llama), str(data), overrides=TRAINING, **CAMPAIGN)
    run_dir = store.get(run_id).run_dir
    wait_for(lambda: (s := read_state(run_dir)) is not None and s.completed >= 1)
    os.kill(store.get(run_id).pid, signal.SIGKILL)
    wait_for(lambda: store.reap_dead() or store.get(run_id).status == "interrupted")
    assert read_state(run_dir).completed < 3, "the campaign finished before it was killed"

    config = build_config(str(tiny_llama), str(data), **TRAINING)
    with pytest.raises(BackpropError) as err:
        multirun.run_campaign(config, **CAMPAIGN, store=store)
    assert err.value.code == "STATE_CAMPAIGN_UNFINISHED" and "--resume" in err.value.hint

    result = multirun.run_campaign(config, **CAMPAIGN, store=store, resume=True)
    assert result.status == "completed" and store.get(run_id).status == "completed"
    ours = load_file(result.adapter_path / "adapter_model.safetensors")
    theirs = load_file(reference.adapter_path / "adapter_model.safetensors")
    for key in theirs:
        torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=0)
    for ours_row, theirs_row in zip(result.forgetting, reference.forgetting):
        assert [x is None for x in ours_row] == [x is None for x in theirs_row]
        assert [x for x in ours_row if x] == pytest.approx([x for x in theirs_row if x], abs=1e-5)


def test_cli_sequential_campaign_with_replay(tiny_llama, tmp_path, capsys):
    from backpropagate_core.cli.app import main

    data = write_tasks(tmp_path / "tasks.jsonl", per_task=4)
    assert main(["multi-run", "--data", str(data), "--model", str(tiny_llama), "--runs", "2",
                 "--steps", "2", "--samples", "4", "--val-per-chunk", "1", "--merge-mode",
                 "sequential", "--replay", "0.5", "--precision", "fp32", "--lr", "5e-3"]) == 0
    out = capsys.readouterr().out
    assert "validation loss per chunk" in out and "average forgetting" in out
    run = RunStore().list(kind="multi_run")[0]
    saved = load_file(run.run_dir / "adapter" / "adapter_model.safetensors")
    last = load_file(run.run_dir / "campaign" / "run-2.safetensors")
    assert all(torch.equal(saved[k], last[k]) for k in last)
    assert run.summary["lambdas"] == [None, None]
    starts = [e for _, e in RunStore().events(run.id, types=("campaign_run_started",))]
    assert [e["replay_examples"] for e in starts] == [0, 2]


def test_stopped_campaign_resumes_at_the_unfinished_run(tiny_llama, tmp_path):
    data = write_tasks(tmp_path / "tasks.jsonl", per_task=4)
    store = RunStore()

    def stop_in_run_2(event):
        if isinstance(event, ev.CampaignRunStarted) and event.run_index == 2:
            (store.get(event.run_id).run_dir / "CANCEL").touch()

    trainer = Trainer(str(tiny_llama), sink=stop_in_run_2, **TRAINING)
    sizes = dict(num_runs=2, steps_per_run=3, samples_per_run=4, val_per_chunk=1)
    stopped = trainer.multi_run(data, **sizes)
    run = store.get(stopped.run_id)
    assert stopped.status == run.status == "cancelled" and stopped.adapter_path is None
    assert run.summary["timeline"] == ["done", "pending"] and read_state(run.run_dir).completed == 1
    trainer.sink = None
    done = trainer.multi_run(data, **sizes, run_id=stopped.run_id, resume=True)
    assert done.status == "completed" and len(done.forgetting) == 2
    assert store.get(done.run_id).summary["timeline"] == ["done", "done"]


def test_unfinished_campaign_is_refused_unless_resumed_or_fresh(tiny_llama, tmp_path):
    data = write_tasks(tmp_path / "tasks.jsonl")
    store = RunStore()
    config = build_config(str(tiny_llama), str(data))
    settings = campaign_settings(**CAMPAIGN)
    run = multirun.open_campaign(store, config, settings, run_id="camp-1")
    (run.run_dir / "campaign").mkdir()
    (run.run_dir / "campaign" / "state.json").write_text(json.dumps({"completed": 1}))
    store.update(run.id, status="interrupted")
    for run_id in ("camp-1", None):
        with pytest.raises(BackpropError) as err:
            multirun.open_campaign(store, config, settings, run_id=run_id)
        assert err.value.code == "STATE_CAMPAIGN_UNFINISHED" and "camp-1" in err.value.message
    assert multirun.find_resumable(store, config, settings, None).id == "camp-1"
    assert multirun.open_campaign(store, config, settings, fresh=True).id != "camp-1"
    restarted = multirun.open_campaign(store, config, settings, run_id="camp-1", fresh=True)
    assert restarted.status == "queued" and read_state(restarted.run_dir) is None


def test_settings_errors_are_config_invalid(tiny_llama, tmp_path):
    with pytest.raises(BackpropError, match="no room") as err:
        campaign_settings(samples_per_run=5, val_per_chunk=5)
    assert err.value.code == "CONFIG_INVALID"
    with pytest.raises(BackpropError) as err:
        campaign_settings(merge_mode="average", num_runs=0)
    assert err.value.code == "CONFIG_INVALID" and "merge_mode" in err.value.message and "num_runs" in err.value.message
    data = write_tasks(tmp_path / "tasks.jsonl", per_task=2)
    with pytest.raises(BackpropError, match="need 30") as err:
        Trainer(str(tiny_llama)).multi_run(data, **CAMPAIGN)
    assert err.value.code == "CONFIG_INVALID"


def test_chunks_hold_out_validation_and_replay_never_uses_it():
    examples = [Example([], line=n, text=str(n)) for n in range(30)]
    settings = campaign_settings(**CAMPAIGN)
    parts = split_chunks(examples, settings, seed=7)
    assert [(len(t), len(v)) for t, v in parts] == [(7, 3)] * 3
    for k, (train, val) in enumerate(parts):
        lines = {e.line for e in train + val}
        assert lines == set(range(10 * k, 10 * (k + 1))) and not {e.line for e in train} & {e.line for e in val}
    assert split_chunks(examples, settings, seed=7) == parts
    chunks = [Part(train, val) for train, val in parts]
    replay = replay_rows(chunks, 2, 0.5, seed=1)
    held_out = {id(e) for c in chunks for e in c.val}
    assert len(replay) == 4 and all(id(e) not in held_out for e in replay)
    assert {e.line for e in replay} <= set(range(20))
    assert replay_rows(chunks, 0, 0.5, seed=1) == []


def test_average_forgetting():
    assert average_forgetting([[2.0, None]]) is None
    assert average_forgetting([[2.0, None, None], [2.5, 1.0, None], [3.0, 1.5, 0.5]]) == \
        pytest.approx(((3.0 - 2.0) + (1.5 - 1.0)) / 2)
