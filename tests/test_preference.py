"""Preference training (DPO, ORPO) on the one training path: formats, defaults, runs,
resume, starting from an SFT run, and the checks made before a run exists."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backpropagate_core import Trainer
from backpropagate_core.data import dataset as data_mod
from backpropagate_core.data.report import report
from backpropagate_core.errors import BackpropError
from backpropagate_core.runs import events as ev
from backpropagate_core.runs.store import RunStore


def _pairs(n: int = 24) -> list[dict]:
    return [{"prompt": [{"role": "user", "content": f"What is item {i}?"}],
             "chosen": [{"role": "assistant", "content": f"Item {i} is short."}],
             "rejected": [{"role": "assistant", "content": f"Well, item {i} is, I think, maybe, a long thing."}]}
            for i in range(n)]


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture
def pairs_file(tmp_path) -> Path:
    return _write(tmp_path / "pairs.jsonl", _pairs())


@pytest.fixture
def sft_file(tmp_path) -> Path:
    return _write(tmp_path / "sft.jsonl", [
        {"messages": [{"role": "user", "content": f"What is item {i}?"},
                      {"role": "assistant", "content": f"Item {i} is short."}]} for i in range(12)])


# ---- formats ------------------------------------------------------------------------------

def test_every_preference_shape_is_read(tmp_path):
    path = _write(tmp_path / "shapes.jsonl", [
        {"prompt": "Capital of France?", "system": "Be brief.", "chosen": "Paris.", "rejected": "Paris, I think."},
        _pairs(1)[0],
        {"messages": [{"role": "user", "content": "Sky?"}], "chosen": "Blue.", "rejected": "Often blue."},
        {"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}],
         "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there, friend!"}]},
    ])
    loaded = data_mod.load(path)
    assert loaded.format == "preference" and len(loaded.examples) == 4
    first, implicit = loaded.examples[0], loaded.examples[3]
    assert [m["role"] for m in first.prompt] == ["system", "user"]
    assert first.chosen == [{"role": "assistant", "content": "Paris."}]
    assert first.rejected == [{"role": "assistant", "content": "Paris, I think."}]
    # The implicit prompt: the turns both conversations share.
    assert implicit.prompt == [{"role": "user", "content": "Hi"}]
    assert implicit.chosen[0]["content"] == "Hello." and implicit.rejected[0]["content"] == "Hello there, friend!"


def test_bad_pairs_are_line_numbered_problems(tmp_path):
    path = _write(tmp_path / "bad.jsonl", [
        _pairs(1)[0],
        {"prompt": "Same?", "chosen": "Yes.", "rejected": "  Yes.  "},
        {"prompt": "Empty?", "chosen": "Fine.", "rejected": "   "},
        {"prompt": "Missing", "chosen": "x"},
        {"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
         "chosen": "b", "rejected": "c"},
        '{"prompt": "broken"',
    ])
    result = report(path)
    assert result.format == "preference" and result.examples == 1
    by_line = {p.line: p.message for p in result.problems}
    assert "same answer" in by_line[2] and "'rejected' is empty" in by_line[3]
    assert "has no 'rejected'" in by_line[4] and "end with a user turn" in by_line[5] and 6 in by_line
    with pytest.raises(BackpropError) as err:  # training refuses the file unless told to skip
        data_mod.load(path)
    assert err.value.code == "INPUT_DATASET_INVALID" and "line 2" in err.value.message


def test_report_shows_pair_lengths(pairs_file, tiny_tokenizer):
    result = report(pairs_file, tiny_tokenizer)
    pairs = result.pairs
    assert pairs["count"] == 24 and pairs["unit"] == "tokens"
    assert pairs["rejected"]["mean"] > pairs["chosen"]["mean"] and pairs["chosen_longer"] == 0.0
    assert [m["role"] for m in result.preview[0]] == ["user", "chosen", "rejected"]


# ---- runs ---------------------------------------------------------------------------------

def _run(model: Path, data: Path, **kw):
    seen: list = []
    result = Trainer(str(model), sink=seen.append).train(str(data), **kw)
    return result, seen


def _evals(seen) -> list[ev.Eval]:
    return [e for e in seen if isinstance(e, ev.Eval)]


@pytest.mark.parametrize("method", ["dpo", "orpo"])
def test_a_preference_run_learns_the_held_out_pairs(tiny_llama, pairs_file, method):
    result, seen = _run(tiny_llama, pairs_file, method=method, steps=10, learning_rate=5e-3, val_fraction=0.25,
                        eval_steps=3, eval_samples=2)
    assert result.status == "completed"
    evals = _evals(seen)
    assert evals[-1].reward_margin > evals[0].reward_margin + 0.01
    assert evals[-1].reward_accuracy >= evals[0].reward_accuracy and evals[-1].reward_accuracy > 0.5
    steps = [e for e in seen if isinstance(e, ev.Step)]
    assert all(s.reward_accuracy is not None and s.chosen_logp is not None for s in steps)
    assert steps[-1].tokens_per_s and steps[-1].tokens_per_s > 0
    finished = [e for e in seen if isinstance(e, ev.Finished)][0]
    assert finished.method == method and finished.reward_accuracy is not None
    started = [e for e in seen if isinstance(e, ev.RunStarted)][0]
    assert started.config["training"]["method"] == method and started.config["training"]["beta"] == 0.1
    # The store keeps the method and its headline figure for the Runs page.
    run = RunStore().get(result.run_id)
    assert run.config["training"]["method"] == method


def test_auto_picks_dpo_for_pairs_and_explains_defaults(tiny_llama, pairs_file):
    from backpropagate_core.training.pipeline import plan_run
    from backpropagate_core.training.run_config import build_config

    plan = plan_run(build_config(str(tiny_llama), str(pairs_file)))
    t, why = plan["config"]["training"], plan["reasons"]
    assert t["method"] == "dpo" and "chosen/rejected" in why["method"]
    assert t["beta"] == 0.1 and "DPO" in why["beta"]
    assert t["sft_weight"] == 1.0 and "chosen answers" in why["sft_weight"]
    assert "pairs" in why["steps"] and "DPO" in why["learning_rate"]
    sft_rate = plan_run(build_config(str(tiny_llama), str(pairs_file), method="sft"))["config"]["training"]
    assert t["learning_rate"] < sft_rate["learning_rate"]


def test_resume_of_a_dpo_run_continues_its_step_count(tiny_llama, pairs_file):
    store = RunStore()

    def stop_at_four(e):
        if isinstance(e, ev.Step) and e.step == 4:
            (store.get(e.run_id).run_dir / "CANCEL").touch()

    first = Trainer(str(tiny_llama), sink=stop_at_four).train(str(pairs_file), method="dpo", steps=8,
                                                             save_steps=2, val_fraction=0.0)
    assert first.status == "cancelled"
    seen: list = []
    resumed = Trainer(str(tiny_llama), sink=seen.append).resume(first.run_id)
    steps = [e.step for e in seen if isinstance(e, ev.Step)]
    assert [e for e in seen if isinstance(e, ev.RunStarted)][0].resumed_from_step == first.steps
    assert steps[0] == first.steps + 1 and steps[-1] == 8 and resumed.status == "completed"


def test_from_run_starts_dpo_from_the_sft_adapter(tiny_llama, pairs_file, sft_file):
    import torch
    from safetensors.torch import load_file

    from backpropagate_core.training import pipeline
    from backpropagate_core.training.run_config import RunConfig
    from backpropagate_core.training.request import create_run

    sft, _ = _run(tiny_llama, sft_file, steps=4, learning_rate=1e-2, val_fraction=0.0)
    store = RunStore()
    run = create_run(store, None, pairs_file, overrides={"from_run": sft.run_id[:8], "steps": 2})
    config = RunConfig.model_validate(run.config)
    assert config.start_from.run == sft.run_id and config.model == str(tiny_llama)

    prep = pipeline.prepare(config, lambda *a, **k: None)
    model = pipeline.load_model(config, prep, lambda *a, **k: None)
    saved = load_file(str(Path(config.start_from.adapter) / "adapter_model.safetensors"))
    state = {k: v for k, v in model.state_dict().items() if "lora_B" in k and ".default." in k}
    assert state and any(v.abs().sum() > 0 for v in state.values())
    for key, value in state.items():
        assert torch.equal(value, saved[key.replace(".default", "")])

    seen: list = []
    result = pipeline.execute_run(run.id, store, extra_sinks=[seen.append])
    assert result.status == "completed"
    # DPO's reference is the SFT adapter: before the first update the model and its
    # reference agree exactly (with the base model as reference they would not).
    first = [e for e in seen if isinstance(e, ev.Step)][0]
    assert first.step == 1 and first.reward_margin == pytest.approx(0.0, abs=1e-5)
    assert not (result.adapter_path / "ref").exists()  # the result is the trained adapter alone
    assert json.loads((result.adapter_path / "adapter_config.json").read_text())["r"] == 16


def test_what_is_refused_before_a_run_exists(tiny_llama, pairs_file, sft_file):
    from backpropagate_core.training.request import create_run

    store = RunStore()
    with pytest.raises(BackpropError) as err:
        create_run(store, str(tiny_llama), sft_file, overrides={"method": "dpo"})
    assert err.value.code == "CONFIG_INVALID" and "preference dataset" in err.value.message
    with pytest.raises(BackpropError) as err:
        create_run(store, str(tiny_llama), pairs_file, campaign={"num_runs": 2, "steps_per_run": 2})
    assert err.value.code == "CONFIG_INVALID" and "SFT only" in err.value.message
    with pytest.raises(BackpropError) as err:
        create_run(store, None, pairs_file, overrides={"from_run": "nope"})
    assert err.value.code == "STATE_RUN_NOT_FOUND"
    assert store.list() == []


def test_the_example_preference_file_reads_in_every_shape():
    example = Path(__file__).parent.parent / "examples" / "formats" / "preference.jsonl"
    loaded = data_mod.load(example)
    assert loaded.format == "preference" and len(loaded.examples) == 4 and not loaded.problems
