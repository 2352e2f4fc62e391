"""Phi-3 family GGUF exports (`gguf_phi3`), checked in llama.cpp against transformers.

Tiny random models in the real configs' shapes (tests/tiny.py PHI3_VARIANTS): Phi-4-mini's
partial rotary and tied embeddings, Phi-3.5-mini's LongRoPE factors, and a plain Phi-3
trained through the pipeline. The LongRoPE variants' original context (512) is shorter
than the 1,100-token verification prompt, so both factor sets are exercised: the long
prompt runs on the long factors, the chat prompts on the short ones.
"""

from __future__ import annotations

import json

import pytest

from backpropagate_core.errors import BackpropError
from tests.export_fixtures import make_adapter, tiny_base
from tests.tiny import PHI3_ORIGINAL_CONTEXT, PHI3_VARIANTS

pytest.importorskip("llama_cpp")


@pytest.fixture(scope="module")
def phi3_bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("phi3-bases")
    return {variant: tiny_base(root, variant) for variant in PHI3_VARIANTS}


@pytest.fixture(scope="module")
def phi35_adapter(phi3_bases, tmp_path_factory):
    # "phi3" in the folder name becomes the file's name: llama.cpp must not take it for Phi-3's tokenizer.
    return make_adapter(phi3_bases["phi3.5"], tmp_path_factory.mktemp("phi35") / "adapter-phi3.5")


def _gguf(path):
    import gguf

    reader = gguf.GGUFReader(path)
    fields = {name: field.contents() for name, field in reader.fields.items() if name.startswith(("phi3.", "general."))}
    return fields, {t.name: t for t in reader.tensors}


@pytest.mark.parametrize("variant, rope_dims, tied", [("phi4-mini", 48, True), ("phi3.5", 64, False)])
def test_phi3_round_trip_f16_and_q8_0(phi3_bases, tmp_path, variant, rope_dims, tied):
    import numpy as np
    from transformers import AutoModelForCausalLM

    from backpropagate_core.export import export_model

    base = phi3_bases[variant]
    adapter = make_adapter(base, tmp_path / f"adapter-{variant}")
    results = {q: export_model(adapter, format="gguf", quantization=q, output_dir=tmp_path / "out")
               for q in ("f16", "q8_0")}
    for quant, result in results.items():
        v = result.verification
        assert v["passed"] and v["tokenization_match"] and v["non_finite_logits"] == 0, (quant, v)
        assert v["long_prompt_tokens"] == 1100 > PHI3_ORIGINAL_CONTEXT
    print(f"\n{variant}:", json.dumps({q: {k: r.verification[k] for k in ("max_logit_diff", "bound", "top1_agreement")}
                                      for q, r in results.items()}))
    f16 = results["f16"].verification
    assert f16["greedy_match"] and f16["max_logit_diff"] < 0.01

    fields, tensors = _gguf(results["f16"].path)
    config = json.loads((base / "config.json").read_text())
    rope = config["rope_parameters"]
    assert fields["general.architecture"] == "phi3"
    assert fields["phi3.rope.dimension_count"] == rope_dims
    assert fields["phi3.rope.scaling.original_context_length"] == PHI3_ORIGINAL_CONTEXT
    scaling = AutoModelForCausalLM.from_pretrained(base).model.rotary_emb.attention_scaling
    assert fields["phi3.rope.scaling.attn_factor"] == pytest.approx(scaling, rel=1e-6)
    assert np.allclose(tensors["rope_factors_long.weight"].data, rope["long_factor"])
    assert np.allclose(tensors["rope_factors_short.weight"].data, rope["short_factor"])
    assert {"blk.0.attn_qkv.weight", "blk.0.ffn_up.weight"} <= set(tensors)
    assert ("output.weight" in tensors) is not tied  # llama.cpp reads a tied head from token_embd


def test_a_phi3_trained_through_the_pipeline_exports(tmp_path, phi3_bases):
    """Phi-3-mini's layout (plain rope, untied): LoRA on the fused qkv/gate_up projections."""
    from backpropagate_core.api import Trainer
    from backpropagate_core.export import export_model

    data = tmp_path / "chat.jsonl"
    data.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": f"Q{i}?"},
                                                       {"role": "assistant", "content": f"A{i}."}]})
                              for i in range(8)) + "\n")
    run = Trainer(str(phi3_bases["phi3"]), precision="fp32", report_to="none").train(
        data, steps=2, val_fraction=0.0, save_steps=2)
    adapter_config = json.loads((run.adapter_path / "adapter_config.json").read_text())
    adapted = {name.rsplit(".", 1)[-1] for name in adapter_config["target_modules"]}
    assert adapted == {"qkv_proj", "gate_up_proj", "o_proj", "down_proj"}
    figures = {}
    for quant in ("f16", "q8_0"):
        v = export_model(run.run_id, format="gguf", quantization=quant).verification
        assert v["passed"] and v["tokenization_match"] and v["non_finite_logits"] == 0
        figures[quant] = {k: v[k] for k in ("max_logit_diff", "bound", "top1_agreement")}
    print("\ntrained phi3:", json.dumps(figures))


def test_llama_cpp_picks_longrope_factors_by_context_size(phi35_adapter, tmp_path):
    """Where llama.cpp and transformers differ by design, shown on the real library: a chat prompt (short factors in transformers) opened in a context larger than
    the original one runs on the long factors in llama.cpp. Verification therefore sizes each
    context to its prompt (`verify_gguf`)."""
    import numpy as np

    from backpropagate_core.export import export_model, verify
    from backpropagate_core.export.chat import open_gguf
    from backpropagate_core.export.merged import load_tokenizer, load_trained, resolve_source

    result = export_model(phi35_adapter, format="gguf", quantization="f16", output_dir=tmp_path / "out")
    source = resolve_source(phi35_adapter)
    ref = verify.capture_reference(load_trained(source, merge=False), load_tokenizer(source), greedy_tokens=0)
    diffs = {}
    for n_ctx in (256, 4 * PHI3_ORIGINAL_CONTEXT):
        llama = open_gguf(result.path, n_ctx=n_ctx)
        try:
            diffs[n_ctx] = max(float(np.abs(verify._gguf_logits(llama, seq) - want).max())
                               for seq, want in zip(ref.prompt_ids, ref.logits))
        finally:
            llama.close()
    bound = verify.bound_for("f16", ref)
    print("\nchat prompts' max logit difference by llama.cpp context size:", diffs, "f16 bound", bound)
    assert diffs[256] < bound < diffs[4 * PHI3_ORIGINAL_CONTEXT], (diffs, bound)


# ---- verification that catches writer bugs ----------------------------------------------------

def _swap_k_and_v(plan):
    """A writer that slices the fused qkv_proj in the wrong order: [q | v | k]."""
    import torch

    from backpropagate_core.export import gguf_phi3

    def reordered(make, q, kv):
        return lambda: torch.cat([make()[:q], make()[q + kv:], make()[q:q + kv]])

    def wrong(arch, config, tensors):
        q = int(config["hidden_size"])
        kv = gguf_phi3.head_dim(config) * int(config["num_key_value_heads"])
        for name, make, shape, kind in plan(arch, config, tensors):
            yield name, reordered(make, q, kv) if name.endswith("attn_qkv.weight") else make, shape, kind
    return wrong


def _mutations(monkeypatch, name):
    from backpropagate_core.export import gguf_phi3, gguf_writer

    rope, factors, plan = gguf_writer._rope, gguf_phi3.rope_factor_tensors, gguf_writer._plan
    patch = {
        "wrong rope base": (gguf_writer, "_rope", lambda config: {**rope(config), "rope_theta": 500.0}),
        "k and v swapped in attn_qkv": (gguf_writer, "_plan", _swap_k_and_v(plan)),
        "no rope factors": (gguf_phi3, "rope_factor_tensors", lambda config, r: iter(())),
        # The long prompt alone runs on the long factors: this shows they take effect.
        "short factors in place of the long": (
            gguf_phi3, "rope_factor_tensors",
            lambda config, r: factors(config, {**r, "long_factor": r["short_factor"]})),
        "no attention factor": (gguf_phi3, "attention_factor", lambda config, r: 1.0),
    }[name]
    monkeypatch.setattr(*patch)


@pytest.mark.parametrize("mutation, quant", [
    ("wrong rope base", "q4_k_m"), ("k and v swapped in attn_qkv", "f16"), ("no rope factors", "f16"),
    ("short factors in place of the long", "f16"), ("no attention factor", "f16")])
def test_phi3_writer_bugs_are_caught(phi35_adapter, tmp_path, monkeypatch, mutation, quant):
    from backpropagate_core.export import export_model

    _mutations(monkeypatch, mutation)
    with pytest.raises(BackpropError) as err:
        export_model(phi35_adapter, format="gguf", quantization=quant, output_dir=tmp_path / "out")
    assert err.value.code == "EXPORT_VERIFY_FAILED"
    assert "max logit difference" in err.value.message
    if quant != "f16":
        assert "before quantizing" in err.value.message  # caught at the 16-bit bound
    assert not (tmp_path / "out" / f"gguf-{quant}").exists()


# ---- refused before writing ---------------------------------------------------------------------

@pytest.mark.parametrize("change, problem", [
    ({"rope_parameters": {"rope_type": "dynamic", "factor": 2.0}}, "rope scaling 'dynamic'"),
    ({"rope_parameters": {"rope_type": "longrope", "short_factor": [1.0] * 3, "long_factor": [1.0] * 3,
                          "original_max_position_embeddings": 256}}, "short_factor with 3 values (expected 32)"),
    ({"head_dim": 32}, "head size"),
])
def test_phi3_settings_llama_cpp_cannot_reproduce_are_refused(change, problem):
    from backpropagate_core.export.gguf_writer import gguf_arch

    config = {"architectures": ["Phi3ForCausalLM"], "hidden_size": 256, "num_attention_heads": 4,
              "num_key_value_heads": 2, "max_position_embeddings": 1024, **change}
    with pytest.raises(BackpropError) as err:
        gguf_arch(config)
    assert err.value.code == "EXPORT_ARCH_UNSUPPORTED" and problem in err.value.message


def test_phi4_mini_settings_read_the_same_from_either_config_layout():
    """Phi-4-mini's published config.json (rope_scaling, top-level partial_rotary_factor) and
    transformers 5's to_dict (rope_parameters) give the same GGUF settings as transformers' rope."""
    from transformers import Phi3Config
    from transformers.models.phi3.modeling_phi3 import Phi3RotaryEmbedding

    from backpropagate_core.export import gguf_phi3
    from backpropagate_core.export.gguf_writer import _rope, gguf_arch

    published = {"architectures": ["Phi3ForCausalLM"], "hidden_size": 3072, "num_attention_heads": 24,
                 "num_key_value_heads": 8, "max_position_embeddings": 131072,
                 "original_max_position_embeddings": 4096, "partial_rotary_factor": 0.75, "rope_theta": 10000.0,
                 "rope_scaling": {"type": "longrope", "short_factor": [1.0] * 48, "long_factor": [2.0] * 48}}
    config = Phi3Config(**{k: v for k, v in published.items() if k != "architectures"})
    expected = Phi3RotaryEmbedding(config).attention_scaling
    for layout in (published, {**config.to_dict(), "architectures": ["Phi3ForCausalLM"]}):
        assert gguf_arch(layout) == "phi3"
        rope = _rope(layout)
        assert gguf_phi3.rope_dims(layout, rope) == 96
        assert gguf_phi3.original_context(layout, rope) == 4096
        assert gguf_phi3.attention_factor(layout, rope) == pytest.approx(expected) == pytest.approx(1.1902, abs=1e-4)


def test_the_file_name_says_phi3_only_for_phi3s_tokenizer():
    """llama.cpp infers Phi-3's strip-whitespace-after-special-tokens rule from the model's
    name (and fails to load a vocabulary without </s> then), so the name must say "phi3"
    exactly when the tokenizer behaves that way."""
    from backpropagate_core.export.gguf_vocab import CONTROL, NORMAL, GGUFVocab, llama_cpp_name

    tokens = ["<unk>", "<s>", "</s>", "a", "<|endoftext|>", "<|user|>", "<|end|>"]
    types = [CONTROL, CONTROL, CONTROL, NORMAL, CONTROL, CONTROL, CONTROL]
    phi3 = GGUFVocab("llama", None, tokens, types, rstrip={2, 5, 6})
    assert llama_cpp_name("support-bot", phi3) == "support-bot-phi3"
    assert llama_cpp_name("Phi-3.5-mini-run", phi3) == "Phi-3.5-mini-run"
    other = GGUFVocab("llama", None, tokens, types, rstrip={5})
    assert llama_cpp_name("phi3-test", other) == "phi_3-test"
    assert llama_cpp_name("my-Phi-3.5-run", GGUFVocab("gpt2", "gpt-2", ["a"], [NORMAL])) == "my-phi_3.5-run"
