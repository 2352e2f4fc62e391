"""Our own HF → GGUF writer for the architectures of our presets.

Writes f32, f16 or bf16 GGUF files from a model's state dict, streaming one tensor at a
time so memory stays at one converted tensor above the model. Quantized formats are made
from this file by llama.cpp's quantizer (`quantize.py`).

Two details decide whether llama.cpp computes the same function as transformers:
- Llama's q/k projection rows are permuted. transformers rotates pairs (i, i + d/2)
  ("rotate half"); llama.cpp's llama architecture rotates adjacent pairs (2i, 2i + 1).
  Interleaving each head's two halves makes the two agree. Qwen2 and Qwen3 use the
  rotate-half convention in llama.cpp too (NEOX rope), so their weights go in unchanged;
  Qwen3's per-head q/k RMSNorms become `attn_q_norm` / `attn_k_norm`.
- 1-D tensors (norms, biases) stay f32, as llama.cpp expects.
Gemma 2 and 3 differ in more ways (norm offsets, soft-capping, sliding windows, two rope
bases); `gguf_gemma` holds those. Phi-3's fused projections, partial rotary and LongRoPE
factors are in `gguf_phi3`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from backpropagate_core.errors import BackpropError
from backpropagate_core.export import gguf_gemma, gguf_phi3
from backpropagate_core.export.gguf_vocab import GGUFVocab, add_vocab, llama_cpp_name

# transformers class → llama.cpp architecture.
SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "Gemma2ForCausalLM": "gemma2",
    "Gemma3ForCausalLM": "gemma3",
    "Gemma3ForConditionalGeneration": "gemma3",  # its language model only
    "Phi3ForCausalLM": gguf_phi3.ARCH,  # Phi-3, Phi-3.5-mini, Phi-4-mini
}
WRITE_TYPES = ("f32", "f16", "bf16")
_ROPE_TYPES = ("default", "linear", "llama3", "yarn")


@dataclass
class GGUFFile:
    path: Path
    arch: str
    tensors: int
    size_bytes: int


def gguf_arch(config: Mapping[str, Any]) -> str:
    """The llama.cpp architecture for a HF config dict; raises if we cannot convert it."""
    config = gguf_gemma.text_config(config)
    archs = config.get("architectures") or []
    name = archs[0] if archs else config.get("model_type", "?")
    if name not in SUPPORTED_ARCHITECTURES:
        raise BackpropError(
            "EXPORT_ARCH_UNSUPPORTED",
            f"{name} cannot be converted to GGUF; supported: {', '.join(SUPPORTED_ARCHITECTURES)}")
    if SUPPORTED_ARCHITECTURES[name] in gguf_gemma.ARCHS:
        gguf_gemma.check(SUPPORTED_ARCHITECTURES[name], config, _rope)
        return SUPPORTED_ARCHITECTURES[name]
    if SUPPORTED_ARCHITECTURES[name] == gguf_phi3.ARCH:
        gguf_phi3.check(config, _rope(config))
        return gguf_phi3.ARCH
    rope = _rope(config)
    if rope["rope_type"] not in _ROPE_TYPES:
        raise BackpropError(
            "EXPORT_ARCH_UNSUPPORTED",
            f"rope scaling {rope['rope_type']!r} is not supported for GGUF export; "
            f"supported: {', '.join(_ROPE_TYPES)}")
    if rope["rope_type"] == "yarn" and (problems := _yarn_problems(rope)):
        raise BackpropError("EXPORT_ARCH_UNSUPPORTED",
                            "llama.cpp cannot run this YaRN rope scaling as transformers does: "
                            + "; ".join(problems))
    return SUPPORTED_ARCHITECTURES[name]


def write_gguf(path: Path, config: Mapping[str, Any], tensors: Mapping[str, Any],
               vocab: GGUFVocab, out_type: str = "f16", name: str | None = None,
               on_tensor: Callable[[int, int], None] | None = None) -> GGUFFile:
    """Write `tensors` (HF names → torch tensors) with `vocab` to a GGUF file at `path`."""
    import gguf

    if out_type not in WRITE_TYPES:
        raise ValueError(f"out_type must be one of {WRITE_TYPES}")
    config = gguf_gemma.text_config(config)
    arch = gguf_arch(config)
    plan = list(_plan(arch, config, tensors))
    writer = gguf.GGUFWriter(str(path), arch)
    _add_hparams(writer, arch, config, out_type, llama_cpp_name(name or "model", vocab))
    add_vocab(writer, vocab)
    for gguf_name, _, shape, kind in plan:
        dtype, nbytes, raw = _stored_type(kind, shape, out_type)
        writer.add_tensor_info(gguf_name, shape, dtype, nbytes, raw_dtype=raw)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for i, (_, make, _shape, kind) in enumerate(plan):
        writer.write_tensor_data(_convert(make(), kind, out_type))
        if on_tensor:
            on_tensor(i + 1, len(plan))
    writer.close()
    return GGUFFile(Path(path), arch, len(plan), Path(path).stat().st_size)


def _plan(arch: str, config: Mapping[str, Any], tensors: Mapping[str, Any]) -> Iterable[tuple]:
    """(gguf name, tensor factory, shape, kind) for every tensor to write, in order."""
    import gguf

    n_layers = int(config["num_hidden_layers"])
    arch_enum = {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2,
                 "qwen3": gguf.MODEL_ARCH.QWEN3, "gemma2": gguf.MODEL_ARCH.GEMMA2,
                 "gemma3": gguf.MODEL_ARCH.GEMMA3, gguf_phi3.ARCH: gguf.MODEL_ARCH.PHI3}[arch]
    names = gguf.get_tensor_name_map(arch_enum, n_layers)
    n_head = int(config["num_attention_heads"])
    n_kv = int(config.get("num_key_value_heads") or n_head)
    tied = bool(config.get("tie_word_embeddings"))
    rope_freqs = _llama3_rope_freqs(config) if _rope(config)["rope_type"] == "llama3" else None
    if rope_freqs is not None:
        yield "rope_freqs.weight", (lambda: rope_freqs), tuple(rope_freqs.shape), "f32"
    if arch == gguf_phi3.ARCH:
        for name, make in gguf_phi3.rope_factor_tensors(config, _rope(config)):
            yield name, make, tuple(make().shape), "f32"
    for hf_name, tensor in tensors.items():
        if arch in gguf_gemma.ARCHS:
            hf_name = gguf_gemma.tensor_name(hf_name)  # None: not part of the text model
            if hf_name is None:
                continue
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        if hf_name == "lm_head.weight" and tied:
            continue
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise BackpropError("EXPORT_ARCH_UNSUPPORTED",
                                f"tensor {hf_name} has no GGUF counterpart for {arch}")
        heads = None
        if arch == "llama" and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            heads = n_head
        elif arch == "llama" and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            heads = n_kv
        kind = "f32" if tensor.dim() <= 1 else "weight"
        if arch in gguf_gemma.ARCHS:
            yield gguf_name, _gemma_factory(arch, config, hf_name, tensor), tuple(tensor.shape), kind
            continue
        yield gguf_name, _factory(tensor, heads), tuple(tensor.shape), kind


def _gemma_factory(arch: str, config: Mapping[str, Any], name: str, tensor: Any) -> Callable[[], Any]:
    tensor = tensor.detach()
    return lambda: gguf_gemma.convert_tensor(arch, config, name, tensor)


def _factory(tensor: Any, heads: int | None) -> Callable[[], Any]:
    tensor = tensor.detach()
    return (lambda: tensor) if heads is None else (lambda: interleave_rope_halves(tensor, heads))


def interleave_rope_halves(w: Any, n_heads: int) -> Any:
    """Reorder each head's rows from [first half, second half] to alternating pairs.

    Row j of a head's first half and row j of its second half are one rotation pair in
    transformers; llama.cpp expects them at rows 2j and 2j + 1.
    """
    rows = w.shape[0]
    half = rows // n_heads // 2
    return (w.reshape(n_heads, 2, half, *w.shape[1:]).transpose(1, 2)
            .reshape(w.shape).contiguous())


def _stored_type(kind: str, shape: tuple, out_type: str):
    import numpy as np
    import gguf

    count = 1
    for d in shape:
        count *= d
    if kind == "f32" or out_type == "f32":
        return np.float32, count * 4, None
    if out_type == "f16":
        return np.float16, count * 2, None
    return np.int16, count * 2, gguf.GGMLQuantizationType.BF16


def _convert(tensor: Any, kind: str, out_type: str):
    import torch

    t = tensor.detach().to("cpu")
    if kind == "f32" or out_type == "f32":
        return t.to(torch.float32).contiguous().numpy()
    if out_type == "f16":
        return t.to(torch.float16).contiguous().numpy()
    # numpy has no bfloat16: store the raw 16-bit patterns.
    return t.to(torch.bfloat16).contiguous().view(torch.int16).numpy()


def _rope(config: Mapping[str, Any]) -> dict:
    """Rope settings from either transformers 5 `rope_parameters` or older keys."""
    params = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    params.setdefault("rope_theta", config.get("rope_theta", 10000.0))
    params["rope_type"] = params.get("rope_type") or params.get("type") or "default"
    return params


def _head_dim(config: Mapping[str, Any]) -> int:
    return int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])


def _add_hparams(writer: Any, arch: str, config: Mapping[str, Any], out_type: str,
                 name: str | None) -> None:
    import gguf

    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "bf16": gguf.LlamaFileType.MOSTLY_BF16}[out_type]
    writer.add_type("model")
    writer.add_name(name or "model")
    writer.add_file_type(int(file_type))
    # llama.cpp's own converter writes it on every file; tools that check it refuse files without.
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(int(config.get("max_position_embeddings") or 2048))
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_block_count(int(config["num_hidden_layers"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(int(config["num_attention_heads"]))
    writer.add_head_count_kv(int(config.get("num_key_value_heads") or config["num_attention_heads"]))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps") or 1e-6))
    writer.add_vocab_size(int(config["vocab_size"]))
    head_dim = _head_dim(config)
    # Phi-4-mini rotates only part of each head.
    phi3 = arch == gguf_phi3.ARCH
    writer.add_rope_dimension_count(gguf_phi3.rope_dims(config, _rope(config)) if phi3 else head_dim)
    if head_dim != config["hidden_size"] // config["num_attention_heads"]:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    rope = _rope(config)
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    if rope["rope_type"] == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    if rope["rope_type"] == "yarn":
        _add_yarn(writer, config, rope)
    if arch in gguf_gemma.ARCHS:
        gguf_gemma.add_hparams(writer, arch, config)
    if phi3:
        gguf_phi3.add_hparams(writer, config, rope)


def _llama3_rope_freqs(config: Mapping[str, Any]):
    """Per-dimension frequency divisors for Llama 3 rope scaling, as llama.cpp reads them.

    transformers computes the scaled inverse frequencies; llama.cpp divides the plain
    ones by `rope_freqs`, so the tensor is the ratio of the two.
    """
    import torch

    rope = _rope(config)
    dim = _head_dim(config)
    base = 1.0 / (rope["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    factor = float(rope["factor"])
    low, high = float(rope["low_freq_factor"]), float(rope["high_freq_factor"])
    old_ctx = float(rope["original_max_position_embeddings"])
    wavelen = 2 * torch.pi / base
    smooth = ((old_ctx / wavelen - low) / (high - low)).clamp(0.0, 1.0)
    # Long wavelengths are slowed by `factor`, short ones kept, the band between blended.
    scaled = (1 - smooth) * base / factor + smooth * base
    return (base / scaled).to(torch.float32)


def _yarn_problems(rope: Mapping[str, Any]) -> list[str]:
    """YaRN settings that llama.cpp's llama, qwen2 and qwen3 cannot follow: they read no
    beta keys (always 32 and 1) and always round the correction range outward."""
    problems = []
    # transformers treats a missing or zero beta as its default, as here.
    if (rope.get("beta_fast") or 32) != 32:
        problems.append(f"beta_fast {rope['beta_fast']} (llama.cpp always uses 32)")
    if (rope.get("beta_slow") or 1) != 1:
        problems.append(f"beta_slow {rope['beta_slow']} (llama.cpp always uses 1)")
    if not rope.get("truncate", True):
        problems.append("truncate false (llama.cpp always truncates the correction range)")
    return problems


def _add_yarn(writer: Any, config: Mapping[str, Any], rope: Mapping[str, Any]) -> None:
    """YaRN's metadata, computed as transformers' `_compute_yarn_parameters` does.

    llama.cpp scales cos/sin by 0.1 ln(factor) + 1 by itself; transformers by its
    `attention_factor` (given, or from mscale / mscale_all_dim). The ratio of the two goes
    into `rope.scaling.attn_factor`, the one attention key these architectures read.
    """
    import math

    import gguf

    # A top-level original_max_position_embeddings wins over the rope one, as in transformers.
    original = int(config.get("original_max_position_embeddings")
                   or rope.get("original_max_position_embeddings") or config["max_position_embeddings"])
    factor = float(rope.get("factor") or config["max_position_embeddings"] / original)

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    wanted = rope.get("attention_factor")
    if wanted is None and rope.get("mscale") and rope.get("mscale_all_dim"):
        wanted = mscale(factor, rope["mscale"]) / mscale(factor, rope["mscale_all_dim"])
    writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
    writer.add_rope_scaling_factor(factor)
    writer.add_rope_scaling_orig_ctx_len(original)
    if wanted is not None:
        writer.add_rope_scaling_attn_factors(float(wanted) / mscale(factor))
