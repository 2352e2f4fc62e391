"""The memory estimator: shapes, the breakdown's behaviour, activations against what
autograd really saves, and `backprop estimate-vram`."""

import json

import pytest

from backpropagate_core.model import presets
from backpropagate_core.training import estimate as est
from backpropagate_core.cli.app import main


@pytest.mark.parametrize("name,billions", [("smollm2-135m", 0.135), ("qwen2.5-0.5b", 0.494),
                                           ("llama-3.2-1b", 1.236), ("llama-3.2-3b", 3.21),
                                           ("qwen2.5-7b", 7.6), ("mistral-7b", 7.25),
                                           ("phi-4-mini", 3.84)])
def test_preset_shapes_have_the_published_parameter_counts(name, billions):
    assert presets.SHAPES[name].params / 1e9 == pytest.approx(billions, rel=0.02)


def test_shape_from_a_local_config_counts_the_real_parameters(tiny_llama):
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    shape = presets.shape_of(str(tiny_llama))
    assert shape.params == sum(p.numel() for p in model.parameters())
    from backpropagate_core.model.loader import add_lora

    lora = add_lora(model, 16, 32, 0.0)
    trainable = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    assert shape.lora_params(16) == trainable


def test_estimate_grows_with_batch_and_length_and_shrinks_with_savings():
    shape = presets.SHAPES["llama-3.2-1b"]
    base = est.estimate(None, 1024, 2, shape=shape)
    assert est.estimate(None, 1024, 4, shape=shape).total_gb > base.total_gb
    assert est.estimate(None, 2048, 2, shape=shape).total_gb > base.total_gb
    assert est.estimate(None, 1024, 2, shape=shape, gradient_checkpointing=True).activations_gb < base.activations_gb / 5
    four = est.estimate(None, 1024, 2, shape=shape, dtype="4bit")
    assert four.weights_gb < base.weights_gb / 2  # embeddings stay bf16
    assert est.estimate(None, 1024, 2, shape=shape, label_fraction=0.5).logits_gb == pytest.approx(base.logits_gb / 2)
    parts = base.to_dict()
    assert parts.pop("total_gb") == pytest.approx(sum(parts.values()))


def test_largest_batch_fits_the_budget_with_the_margin():
    shape = presets.SHAPES["qwen2.5-0.5b"]
    batch = est.largest_batch(None, 1024, 24.0, shape=shape)
    assert batch >= 2
    assert est.estimate(None, 1024, batch, shape=shape).total_gb <= 24.0 * 0.85
    assert est.estimate(None, 1024, batch * 2, shape=shape).total_gb > 24.0 * 0.85
    assert est.largest_batch(None, 1024, 0.5, shape=shape) == 1  # never below one
    assert est.largest_batch(0.5, 1024, 24.0) >= 1  # parameter count only: a guessed shape


def test_activation_estimate_covers_what_autograd_saves(tiny_llama):
    """Sum the bytes of every tensor autograd keeps for the backward pass of a LoRA model
    (each storage once) and compare with the per-token formula."""
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    from backpropagate_core.model.loader import add_lora
    from backpropagate_core.training.speed import causal_lm

    model = add_lora(AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32), 8, 16, 0.0)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    batch, seq = 2, 96
    ids = torch.randint(5, 500, (batch, seq))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        causal_lm(model).model(input_ids=ids, use_cache=False).last_hidden_state.sum().backward()
    measured = sum(seen.values())
    shape = presets.shape_of(str(tiny_llama))
    estimated = batch * seq * est.activation_bytes_per_token(shape, act_bytes=4.0)
    assert measured <= estimated <= 2.5 * measured, (measured, estimated)


def test_cli_prints_breakdown_and_largest_batch(capsys):
    assert main(["estimate-vram", "--model", "llama-3.2-3b", "--seq-len", "2048", "--batch", "8",
                 "--vram-gb", "24", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["largest_batch"] >= 1 and out["budget_gb"] == 24
    assert set(out["estimate"]) >= {"weights_gb", "lora_gb", "optimizer_gb", "activations_gb", "total_gb"}
    assert main(["estimate-vram", "--model", "llama-3.2-3b", "--seq-len", "2048", "--4bit",
                 "--gradient-checkpointing", "--vram-gb", "12"]) == 0
    text = capsys.readouterr().out
    assert "weights" in text and "largest batch that fits 12.0 GB" in text


def test_cli_says_when_nothing_fits(capsys):
    assert main(["estimate-vram", "--model", "mistral-7b", "--seq-len", "4096", "--vram-gb", "8"]) == 0
    assert "does not fit 8.0 GB" in capsys.readouterr().out


def test_cli_unknown_model_is_a_coded_error(capsys):
    assert main(["estimate-vram", "--model", "no/such-model"]) == 1
    assert "[INPUT_MODEL_NOT_FOUND]" in capsys.readouterr().err


@pytest.mark.parametrize("preset", presets.PRESETS, ids=lambda p: p.name)
def test_preset_memory_figures_are_the_estimators_rounded_up(preset):
    """The table users pick from says what the estimator says (batch 1, 2,048 tokens, gradient
    checkpointing), rounded up: never below it, and at most 1.5 GB above."""
    for figure, dtype in ((preset.vram_gb, "bf16"), (preset.vram_gb_4bit, "4bit")):
        estimated = est.estimate(seq_len=2048, batch=1, shape=preset.shape, dtype=dtype,
                                 gradient_checkpointing=True, fused_kernels=True).total_gb
        assert estimated <= figure <= estimated + 1.5, (dtype, estimated, figure)


def test_the_readme_lists_every_preset_with_its_figures():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for p in presets.PRESETS:
        assert f"`{p.name}`" in readme and f"{p.vram_gb:g} GB" in readme, p.name
