"""Out-of-memory recovery: halve the batch, double accumulation, continue; tested by
injecting CUDA out-of-memory errors into a tiny model's forward pass on the CPU."""

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from backpropagate_core.runs import events as ev  # noqa: E402
from backpropagate_core.model import loader as model_mod  # noqa: E402
from backpropagate_core.training import speed  # noqa: E402
from backpropagate_core.errors import BackpropError  # noqa: E402
from backpropagate_core.api import Trainer  # noqa: E402
from tests.tiny import qa_jsonl  # noqa: E402


@pytest.fixture
def dataset(tmp_path) -> Path:
    return qa_jsonl(tmp_path / "qa.jsonl", 24)


def inject_oom(monkeypatch, max_examples: int, after_calls: int = 0) -> dict:
    """Make the decoder raise CUDA's OOM error for micro-batches of more than
    `max_examples` examples, once `after_calls` forward passes have succeeded."""
    state = {"calls": 0, "ooms": 0, "sizes": []}
    real = model_mod.add_lora

    def add_lora(*args, **kwargs):
        peft_model = real(*args, **kwargs)

        def hook(module, args, kw):
            positions = kw.get("position_ids")
            ids = kw.get("input_ids")
            n = int((positions == 0).sum()) if positions is not None else ids.shape[0]
            if module.training and n > max_examples and state["calls"] >= after_calls:
                state["ooms"] += 1
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            if module.training:
                state["calls"] += 1
                state["sizes"].append(n)

        speed.causal_lm(peft_model).model.register_forward_pre_hook(hook, with_kwargs=True)
        return peft_model

    monkeypatch.setattr(model_mod, "add_lora", add_lora)
    return state


def train(tiny_llama, dataset, events, **overrides):
    settings = dict(steps=6, batch_size=4, grad_accum=1, val_fraction=0.0, save_steps=100,
                    learning_rate=1e-3, report_to="none")
    return Trainer(str(tiny_llama), sink=events.append).train(dataset, **{**settings, **overrides})


def test_oom_mid_run_halves_batch_and_continues_from_that_step(tiny_llama, dataset, monkeypatch):
    state = inject_oom(monkeypatch, max_examples=1, after_calls=3)
    events: list = []
    result = train(tiny_llama, dataset, events)
    assert result.status == "completed" and result.steps == 6
    warnings = [e.message for e in events if isinstance(e, ev.LogLine) and "out of memory" in e.message]
    assert len(warnings) == 2, warnings
    assert "at step 3; retrying with batch 2 x accumulation 2" in warnings[0]
    assert "batch 1 x accumulation 4" in warnings[1]
    # Steps 1-3 ran at batch 4; the rest at batch 1 with 4 micro-batches per step.
    assert state["sizes"] == [4, 4, 4] + [1] * 12
    assert (result.run_dir / "checkpoints" / "checkpoint-3").is_dir()
    steps = [e.step for e in events if isinstance(e, ev.Step)]
    assert steps[-1] == 6 and steps.count(4) == 1  # no step trained twice or skipped


def test_recovery_gives_up_with_a_coded_error(tiny_llama, dataset, monkeypatch):
    state = inject_oom(monkeypatch, max_examples=0)
    events: list = []
    with pytest.raises(BackpropError) as err:
        train(tiny_llama, dataset, events, batch_size=8)
    assert err.value.code == "RUNTIME_OOM_RECOVERY_EXHAUSTED"
    assert state["ooms"] == 4  # batch 8, 4, 2 and 1: three retries
    assert any(isinstance(e, ev.Failed) and e.code == "RUNTIME_OOM_RECOVERY_EXHAUSTED" for e in events)


def test_recovery_can_be_turned_off(tiny_llama, dataset, monkeypatch):
    state = inject_oom(monkeypatch, max_examples=1)
    with pytest.raises(BackpropError) as err:
        train(tiny_llama, dataset, [], oom_recovery=False)
    assert err.value.code == "RUNTIME_TRAINING_FAILED" and "out of memory" in err.value.message
    assert state["ooms"] == 1
