"""Training on tiny random models: loss falls, checkpoints resume, stops are graceful."""

import json
from pathlib import Path

import pytest

from backpropagate_core.runs import events as ev
from backpropagate_core.errors import BackpropError
from backpropagate_core.runs.store import RunStore
from backpropagate_core.api import Trainer

FACTS = [("What colour is the sky?", "The sky is blue."),
         ("What do bees make?", "Bees make honey."),
         ("What is frozen water?", "Frozen water is ice."),
         ("Where does bread rise?", "Bread rises in a warm place.")]


def write_dataset(path: Path, repeats: int = 6) -> Path:
    rows = [{"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}
            for _ in range(repeats) for q, a in FACTS]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.fixture
def dataset(tmp_path) -> Path:
    return write_dataset(tmp_path / "facts.jsonl")


def test_tiny_model_overfits_and_loss_falls(tiny_llama, dataset, tmp_path):
    steps = []
    trainer = Trainer(str(tiny_llama), sink=lambda e: steps.append(e) if isinstance(e, ev.Step) else None)
    result = trainer.train(dataset, steps=40, learning_rate=5e-3, lr_scheduler="constant",
                           val_fraction=0.0, save_steps=40)
    losses = [s.loss for s in steps]
    assert result.status == "completed" and result.steps == 40
    # A random tiny model starts near ln(vocab) ~ 6.3; memorising four facts drops it by >1.
    assert sum(losses[-5:]) / 5 < losses[0] - 0.7, losses
    assert all(s.tokens_per_s is None or s.tokens_per_s > 0 for s in steps)

    saved = trainer.save(tmp_path / "adapter-copy")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    model = PeftModel.from_pretrained(base, saved)
    assert any("lora_A" in n for n, _ in model.named_parameters())
    run = RunStore().get(result.run_id)
    assert run.status == "completed" and run.final_loss == pytest.approx(losses[-1])
    assert run.artifacts["adapter"] == str(result.adapter_path)


def test_qwen2_trains_too(tiny_qwen2, dataset):
    result = Trainer(str(tiny_qwen2)).train(dataset, steps=3, val_fraction=0.0)
    assert result.status == "completed"
    assert (result.adapter_path / "adapter_model.safetensors").is_file()


def test_stop_writes_checkpoint_and_resume_continues_step_count(tiny_llama, dataset):
    store = RunStore()

    def stop_at_five(e):
        if isinstance(e, ev.Step) and e.step == 5:
            (store.get(e.run_id).run_dir / "CANCEL").touch()

    trainer = Trainer(str(tiny_llama), sink=stop_at_five)
    first = trainer.train(dataset, steps=10, save_steps=4, val_fraction=0.0)
    assert first.status == "cancelled"
    run = store.get(first.run_id)
    assert run.status == "cancelled"
    ckpts = sorted(p.name for p in (run.run_dir / "checkpoints").iterdir())
    assert f"checkpoint-{first.steps}" in ckpts and not any(c.endswith(".partial") for c in ckpts)

    seen = []
    resumed = Trainer(str(tiny_llama), sink=seen.append).resume(first.run_id)
    started = [e for e in seen if isinstance(e, ev.RunStarted)][0]
    assert started.resumed_from_step == first.steps
    steps = [e.step for e in seen if isinstance(e, ev.Step)]
    assert steps[0] == first.steps + 1 and steps[-1] == 10
    assert resumed.status == "completed" and store.get(first.run_id).status == "completed"


def test_partial_checkpoint_is_ignored_and_cleaned(tiny_llama, dataset):
    store = RunStore()
    first = Trainer(str(tiny_llama)).train(dataset, steps=4, save_steps=2, val_fraction=0.0)
    ckpt_dir = store.get(first.run_id).run_dir / "checkpoints"
    fake = ckpt_dir / "checkpoint-99.partial"
    fake.mkdir()
    (fake / "trainer_state.json").write_text("{}")
    seen = []
    Trainer(str(tiny_llama), sink=seen.append).resume(first.run_id)
    assert not fake.exists()
    assert [e for e in seen if isinstance(e, ev.RunStarted)][0].resumed_from_step == 4


def test_bad_dataset_fails_with_code_and_line(tiny_llama, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}\n{oops\n')
    with pytest.raises(BackpropError) as err:
        Trainer(str(tiny_llama)).train(bad, steps=2)
    assert err.value.code == "INPUT_DATASET_INVALID" and "line 2" in err.value.message
    run = RunStore().list()[0]
    assert run.status == "failed" and run.error_code == "INPUT_DATASET_INVALID"


def test_unknown_model_gets_coded_error(dataset):
    with pytest.raises(BackpropError) as err:
        Trainer("not-a-model").train(dataset, steps=1)
    assert err.value.code == "INPUT_MODEL_NOT_FOUND"


def test_gpu_only_option_on_cpu_is_refused(tiny_llama, dataset):
    with pytest.raises(BackpropError) as err:
        Trainer(str(tiny_llama), load_in_4bit=True).train(dataset, steps=1)
    assert err.value.code == "CONFIG_GPU_REQUIRED"
