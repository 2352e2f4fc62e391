"""Gemma 2 and Gemma 3 in GGUF: the details `export/gguf_gemma.py` handles, each shown to
matter on tiny models, a LoRA-trained Gemma on Gemma's kind of tokenizer, the multimodal
Gemma 3's language model, and the settings llama.cpp cannot run. The plain round trips and
the wrong-rope-base check run with the other architectures in test_export_gguf.py."""

from __future__ import annotations

import json

import pytest

from backpropagate_core.errors import BackpropError
from tests.export_fixtures import failed_export, make_adapter, tensor_types, tiny_base, trained_run

pytest.importorskip("llama_cpp")


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("gemma-bases")
    return {arch: tiny_base(root, arch) for arch in ("gemma2", "gemma3")}


@pytest.mark.parametrize("arch, mutation", [
    ("gemma2", "norm offset"), ("gemma3", "norm offset"),
    ("gemma2", "final soft-cap"), ("gemma2", "attention soft-cap"),
    ("gemma2", "sliding window"), ("gemma3", "sliding window"), ("gemma3", "window pattern"),
    ("gemma3", "local rope base"), ("gemma3", "linear rope scaling"), ("gemma3", "query scale"),
])
def test_gemma_details_are_caught_when_missing(bases, arch, mutation, monkeypatch):
    """Each Gemma detail the writer handles changes the logits of the tiny models (their
    caps, window and norms are made to act), so a writer that forgot one fails verification.
    Measured at f16: max logit differences of 0.46-1.8 against bounds near 0.03."""
    import gguf

    from backpropagate_core.export import gguf_gemma, gguf_writer

    no_op = lambda self, *args: None  # noqa: E731 - the key is left out of the file
    if mutation == "norm offset":
        monkeypatch.setattr(gguf_gemma, "norm_shift", lambda: 0.0)
    elif mutation == "final soft-cap":
        monkeypatch.setattr(gguf.GGUFWriter, "add_final_logit_softcapping", no_op)
    elif mutation == "attention soft-cap":
        monkeypatch.setattr(gguf.GGUFWriter, "add_attn_logit_softcapping", no_op)
    elif mutation == "sliding window":
        monkeypatch.setattr(gguf.GGUFWriter, "add_sliding_window", no_op)
    elif mutation == "window pattern":
        monkeypatch.setattr(gguf.GGUFWriter, "add_sliding_window_pattern", no_op)
    elif mutation == "local rope base":
        real_local = gguf_gemma.local_rope
        monkeypatch.setattr(gguf_gemma, "local_rope", lambda c: {**real_local(c), "rope_theta": 1e6})
    elif mutation == "linear rope scaling":
        real = gguf_writer._rope
        monkeypatch.setattr(gguf_writer, "_rope", lambda c: {**real(c), "rope_type": "default"})
    else:  # the tiny Gemma 3 has query_pre_attn_scalar = hidden / heads, llama.cpp assumes head_dim
        monkeypatch.setattr(gguf_gemma, "query_scale", lambda arch, config: 1.0)
    assert "max logit difference" in failed_export(bases[arch], quant="f16")


def test_gemma2_query_pre_attn_scalar_is_folded_into_the_queries(tmp_path):
    """llama.cpp scales Gemma 2 scores by head_dim^-0.5; another query_pre_attn_scalar is
    carried by q_proj (Gemma 3's, by q_norm: the tiny Gemma 3 above needs it)."""
    from backpropagate_core.export import export_model
    from backpropagate_core.export.gguf_gemma import query_scale

    base = tiny_base(tmp_path, "gemma2")
    config = json.loads((base / "config.json").read_text())
    config["query_pre_attn_scalar"] = 32
    (base / "config.json").write_text(json.dumps(config))
    assert query_scale("gemma2", config) == 2.0  # sqrt(head_dim 128 / 32)
    result = export_model(make_adapter(base, tmp_path / "adapter"), format="gguf", quantization="f16",
                          output_dir=tmp_path / "out")
    assert result.verification["passed"] and result.verification["greedy_match"]


@pytest.mark.parametrize("arch", ["gemma2", "gemma3"])
def test_trained_gemma_with_a_gemma_tokenizer(tmp_path, arch):
    """LoRA-trained 2 steps through the pipeline on Gemma's kind of tokenizer (sentencepiece BPE
    with byte fallback, <bos> added, no space prefix) and Gemma 3's chat template; the GGUF
    tokenizes plain text and chat prompts as transformers does, and carries Gemma's keys."""
    import gguf
    import numpy as np
    from safetensors.torch import load_file

    from backpropagate_core.export import export_model
    from tests.export_fixtures import tiny_gemma_spm

    pytest.importorskip("sentencepiece")
    base = tiny_gemma_spm(tmp_path, arch)
    run = trained_run(base, tmp_path)
    for quant in ("f16", "q8_0"):
        result = export_model(run.run_id, format="gguf", quantization=quant)
        v = result.verification
        assert v["passed"] and v["tokenization_match"] and v["chat_tokenization_match"], v
    fields = gguf.GGUFReader(result.path).fields

    def value(key):
        return fields[key].contents()

    assert value("tokenizer.ggml.model") == "llama" and value("tokenizer.ggml.add_bos_token")
    assert not value("tokenizer.ggml.add_space_prefix")
    assert value(f"{arch}.attention.sliding_window") == 32
    assert value(f"{arch}.attention.sliding_window_pattern") == [True, False]
    if arch == "gemma2":
        assert (value("gemma2.attn_logit_softcapping"), value("gemma2.final_logit_softcapping")) == (4.0, 1.0)
    else:
        assert (value("gemma3.rope.freq_base"), value("gemma3.rope.freq_base_swa")) == (1e6, 1e4)
        assert value("gemma3.rope.scaling.factor") == 8.0
    # Norms are stored as 1 + w (checked on the f16 file, where 1-D tensors stay f32).
    f16 = export_model(run.run_id, format="gguf", quantization="f16").path
    stored = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(f16).tensors}
    hf = load_file(base / "model.safetensors")["model.layers.0.pre_feedforward_layernorm.weight"].numpy()
    assert np.allclose(stored["blk.0.ffn_norm.weight"], hf + 1.0)


def test_gemma3_multimodal_exports_its_language_model(tmp_path):
    """Gemma3ForConditionalGeneration (Gemma 3 4B and up): the GGUF is the text model alone."""
    from backpropagate_core.export import export_model
    from tests.export_fixtures import tiny_gemma3_multimodal

    adapter = make_adapter(tiny_gemma3_multimodal(tmp_path), tmp_path / "adapter")
    result = export_model(adapter, format="gguf", quantization="q8_0", output_dir=tmp_path / "out")
    v = result.verification
    assert v["passed"] and v["tokenization_match"] and v["top1_agreement"] > 0.9
    names = set(tensor_types(result.path))
    assert "blk.1.attn_q_norm.weight" in names and not any(n.startswith(("v.", "mm.")) for n in names)
    assert len(names) == 2 + 2 * 13  # embeddings, output norm, 13 tensors per layer


def test_gemma_settings_llama_cpp_cannot_run_are_refused_together():
    from backpropagate_core.export.gguf_writer import gguf_arch

    config = {"architectures": ["Gemma3ForCausalLM"], "hidden_size": 256, "num_attention_heads": 4,
              "num_hidden_layers": 2, "hidden_activation": "gelu", "attn_logit_softcapping": 50.0,
              "rope_parameters": {"full_attention": {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0},
                                  "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}}
    with pytest.raises(BackpropError) as err:
        gguf_arch(config)
    assert err.value.code == "EXPORT_ARCH_UNSUPPORTED"
    for problem in ("'gelu'", "attention soft-capping", "rope 'yarn' on global layers"):
        assert problem in err.value.message
    assert gguf_arch({**config, "hidden_activation": "gelu_pytorch_tanh", "attn_logit_softcapping": None,
                      "rope_parameters": {**config["rope_parameters"],
                                          "full_attention": {"rope_type": "linear", "factor": 8.0}}}) == "gemma3"
