"""Phi-3, Phi-3.5-mini and Phi-4-mini (`Phi3ForCausalLM`) in GGUF: what `gguf_writer` does
differently for them.

What decides whether llama.cpp's phi3 graph computes the function transformers computes:
- The fused projections go in as they are: `qkv_proj` becomes `attn_qkv` (llama.cpp splits
  its rows as [q | k | v], the order Phi3Attention slices them) and `gate_up_proj` becomes
  `ffn_up` (llama.cpp's SwiGLU takes the first half as the gate, as Phi3MLP does). Rope is
  NEOX (rotate half) on both sides, so no q/k rows are permuted.
- Partial rotary (Phi-4-mini: 0.75 of each head): only the rope dimension count says so.
- LongRoPE (Phi-3.5-mini, Phi-4-mini): the short and long per-dimension frequency divisors
  become `rope_factors_short` / `rope_factors_long`, and transformers' attention factor
  (sqrt(1 + ln(scale) / ln(original context)), which multiplies cos and sin) is written
  as `rope.scaling.attn_factor`.
- Which factor set applies differs by design: transformers switches a whole forward pass
  to the long factors once the sequence is longer than the original context (4,096 for the
  real models); llama.cpp picks by its context size (`n_ctx`), so a llama.cpp context
  larger than the original context uses the long factors for short prompts too.
- llama.cpp ignores Phi's sliding window (it warns and attends to the whole context);
  transformers applies it. The two agree as long as a conversation is shorter than the
  window (Phi-3-mini-4k: 2,047 tokens).
- Tied embeddings (Phi-4-mini): llama.cpp's phi3 loader reads the output matrix from
  the token embeddings when `output.weight` is absent.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from backpropagate_core.errors import BackpropError

ARCH = "phi3"
ROPE_TYPES = ("default", "longrope")


def head_dim(config: Mapping[str, Any]) -> int:
    return int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])


def rope_dims(config: Mapping[str, Any], rope: Mapping[str, Any]) -> int:
    """Rotated dimensions per head, as transformers computes them."""
    partial = rope.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0))
    return int(head_dim(config) * float(partial if partial is not None else 1.0))


def original_context(config: Mapping[str, Any], rope: Mapping[str, Any]) -> int:
    """The pre-training context the long factors extend (transformers prefers the top-level key)."""
    return int(config.get("original_max_position_embeddings") or rope.get("original_max_position_embeddings")
               or config.get("max_position_embeddings") or 4096)


def check(config: Mapping[str, Any], rope: Mapping[str, Any]) -> None:
    """Raise EXPORT_ARCH_UNSUPPORTED naming every setting llama.cpp's phi3 graph cannot reproduce."""
    problems = []
    if rope["rope_type"] not in ROPE_TYPES:
        problems.append(f"rope scaling {rope['rope_type']!r} (supported: {', '.join(ROPE_TYPES)})")
    if head_dim(config) * int(config["num_attention_heads"]) != int(config["hidden_size"]):
        problems.append("a head size other than hidden / heads (llama.cpp's phi3 graph assumes it)")
    if rope["rope_type"] == "longrope":
        half = rope_dims(config, rope) // 2
        for key in ("short_factor", "long_factor"):
            if len(rope.get(key) or ()) != half:
                problems.append(f"{key} with {len(rope.get(key) or ())} values (expected {half})")
    if problems:
        raise BackpropError("EXPORT_ARCH_UNSUPPORTED",
                            "this Phi-3 model cannot be converted to GGUF: " + "; ".join(problems))


def rope_factor_tensors(config: Mapping[str, Any], rope: Mapping[str, Any]) -> Iterable[tuple[str, Callable]]:
    """(GGUF name, factory) of the LongRoPE factor tensors; none without LongRoPE."""
    import torch

    if rope["rope_type"] != "longrope":
        return
    for name, key in (("rope_factors_long.weight", "long_factor"), ("rope_factors_short.weight", "short_factor")):
        factors = torch.tensor(rope[key], dtype=torch.float32)
        yield name, (lambda t=factors: t)


def attention_factor(config: Mapping[str, Any], rope: Mapping[str, Any]) -> float:
    """The cos/sin multiplier transformers applies with LongRoPE (1.0 without it)."""
    if rope["rope_type"] != "longrope":
        return 1.0
    if rope.get("attention_factor") is not None:
        return float(rope["attention_factor"])
    original = original_context(config, rope)
    scale = float(rope.get("factor") or int(config["max_position_embeddings"]) / original)
    return math.sqrt(1 + math.log(scale) / math.log(original)) if scale > 1.0 else 1.0


def add_hparams(writer: Any, config: Mapping[str, Any], rope: Mapping[str, Any]) -> None:
    """The phi3 keys beyond the common ones (the rope dimension count is written there)."""
    writer.add_rope_scaling_orig_ctx_len(original_context(config, rope))
    # llama.cpp reads the window and then disables it for phi3; written as its converter does.
    writer.add_sliding_window(int(config.get("sliding_window") or 0))
    if rope["rope_type"] == "longrope":
        writer.add_rope_scaling_attn_factors(attention_factor(config, rope))
