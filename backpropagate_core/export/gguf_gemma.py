"""Gemma 2 and Gemma 3 (text) in GGUF: what `gguf_writer` does differently for them.

What decides whether llama.cpp computes the function transformers computes:
- Gemma's RMSNorm multiplies by (1 + w); llama.cpp multiplies by the stored weight, so
  every norm, Gemma 3's per-head q/k norms included, is stored as 1 + w.
- The sqrt(hidden) embedding scale is applied by llama.cpp's gemma graphs themselves, and
  their rope is NEOX (rotate half), so embeddings and q/k rows go in unchanged.
- transformers scales attention scores by query_pre_attn_scalar^-0.5; llama.cpp
  hard-codes head_dim^-0.5 (hidden/heads for the 27B sizes, recognised by layer count).
  When the two differ the ratio is folded into the queries: into q_proj for Gemma 2, into
  q_norm for Gemma 3, whose q norm would undo a scaled projection.
- Gemma 2 caps attention scores and final logits with tanh; llama.cpp always applies both
  (defaults 50 and 30), so the config's caps are written, and a disabled cap as one too
  large to act. Gemma 3 caps no attention scores (llama.cpp cannot), its logits only
  when the config says so.
- Sliding-window layers: the window and the per-layer pattern come from `layer_types`;
  Gemma 3's local layers have their own rope base, its global ones may scale linearly.
- Gemma3ForConditionalGeneration (4B and up): the language model only. The vision tower
  and projector are left out (llama.cpp reads them from a separate mmproj file), so the
  GGUF answers text, not images.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from backpropagate_core.errors import BackpropError

ARCHS = ("gemma2", "gemma3")
_TANH_GELU = ("gelu_pytorch_tanh", "gelu_new", "gelu_fast")
_NO_CAP = 1e9
"""A cap so large that tanh(x / cap) * cap == x in float32: "no soft-capping" for llama.cpp's
Gemma 2 graph, which always applies one."""
_LLAMA_CPP_27B_LAYERS = {"gemma2": 46, "gemma3": 62}
_TEXT_ONLY_PREFIXES = ("model.vision_tower.", "model.multi_modal_projector.",
                       "vision_tower.", "multi_modal_projector.")


def text_config(config: Mapping[str, Any]) -> dict:
    """The language model's config as one flat dict.

    A multimodal Gemma 3 keeps it in `text_config`; Gemma 3's per-layer-type rope
    (`rope_parameters` = {"full_attention": ..., "sliding_attention": ...}) becomes the global
    layers' parameters in `rope_parameters`, as for other models, and the local ones in
    `rope_local_parameters`.
    """
    flat = dict(config)
    if isinstance(config.get("text_config"), Mapping) and "vocab_size" not in config:
        flat = {**config["text_config"], "architectures": config.get("architectures"),
                "dtype": config.get("dtype") or config["text_config"].get("dtype")}
    rope = flat.get("rope_parameters") or {}
    if "full_attention" in rope or "sliding_attention" in rope:
        flat["rope_parameters"] = dict(rope.get("full_attention") or {})
        flat["rope_local_parameters"] = dict(rope.get("sliding_attention") or {})
    elif "rope_local_base_freq" in flat:  # configs written before transformers 5
        flat["rope_local_parameters"] = {"rope_type": "default", "rope_theta": flat["rope_local_base_freq"]}
    return flat


def check(arch: str, config: Mapping[str, Any], rope_of) -> None:
    """Raise EXPORT_ARCH_UNSUPPORTED naming every setting llama.cpp's graph cannot reproduce.

    `rope_of(config)` is the writer's reading of rope settings (global layers)."""
    problems = []
    if config.get("hidden_activation", "gelu_pytorch_tanh") not in _TANH_GELU:
        problems.append(f"activation {config.get('hidden_activation')!r} (llama.cpp uses tanh-approximated GELU)")
    if config.get("use_bidirectional_attention"):
        problems.append("bidirectional attention (an embedding model, not a causal LM)")
    if config.get("attention_bias"):
        problems.append("attention biases")
    if arch == "gemma3" and config.get("attn_logit_softcapping") is not None:
        problems.append("attention soft-capping (llama.cpp's Gemma 3 graph has none)")
    if arch == "gemma2" and not config.get("tie_word_embeddings", True):
        problems.append("an untied LM head (llama.cpp's Gemma 2 reads the output from the embeddings)")
    rope_types = {"global": rope_of(config)["rope_type"]}
    if arch == "gemma3":
        rope_types["local"] = local_rope(config)["rope_type"]
    for layers, kind in rope_types.items():
        allowed = ("default",) if layers == "local" else ("default", "linear")
        if kind not in allowed:
            problems.append(f"rope {kind!r} on {layers} layers (supported: {', '.join(allowed)})")
    if problems:
        raise BackpropError("EXPORT_ARCH_UNSUPPORTED",
                            f"{config['architectures'][0]} with " + "; ".join(problems)
                            + " cannot be converted to GGUF")


def local_rope(config: Mapping[str, Any]) -> dict:
    """Rope of the sliding-window layers (Gemma 2 uses the global one everywhere)."""
    params = dict(config.get("rope_local_parameters") or {})
    params.setdefault("rope_theta", 10000.0)
    params["rope_type"] = params.get("rope_type") or params.get("type") or "default"
    return params


def tensor_name(hf_name: str) -> str | None:
    """The name the gguf tensor map knows, or None for a tensor the text model leaves out."""
    if hf_name.startswith(_TEXT_ONLY_PREFIXES):
        return None
    return hf_name.replace("model.language_model.", "model.", 1)


def convert_tensor(arch: str, config: Mapping[str, Any], name: str, tensor: Any) -> Any:
    """The weight llama.cpp needs in place of transformers' `tensor` (`name` as tensor_name gives)."""
    scale = query_scale(arch, config)
    if name.endswith("norm.weight"):
        tensor = tensor.float() + norm_shift()
        if arch == "gemma3" and name.endswith("self_attn.q_norm.weight") and scale != 1.0:
            tensor = tensor * scale
    elif arch == "gemma2" and name.endswith("self_attn.q_proj.weight") and scale != 1.0:
        tensor = tensor.float() * scale
    return tensor


def norm_shift() -> float:
    """What Gemma's RMSNorm adds to its weight before multiplying."""
    return 1.0


def query_scale(arch: str, config: Mapping[str, Any]) -> float:
    """Factor on the queries that turns llama.cpp's fixed attention scale into transformers'
    query_pre_attn_scalar^-0.5 (1.0 for the published models)."""
    layers, heads = int(config["num_hidden_layers"]), int(config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or config["hidden_size"] // heads)
    assumed = config["hidden_size"] // heads if layers == _LLAMA_CPP_27B_LAYERS[arch] else head_dim
    wanted = float(config.get("query_pre_attn_scalar") or head_dim)
    return math.sqrt(assumed / wanted)


def add_hparams(writer: Any, arch: str, config: Mapping[str, Any]) -> None:
    """The Gemma keys on top of the writer's common ones."""
    head_dim = int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])
    if head_dim == config["hidden_size"] // config["num_attention_heads"]:
        # The writer only writes these when they differ from hidden / heads.
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    layer_types = config.get("layer_types") or []
    sliding = [t == "sliding_attention" for t in layer_types]
    if config.get("sliding_window") and any(sliding):
        writer.add_sliding_window(int(config["sliding_window"]))
        writer.add_sliding_window_pattern(sliding)
    elif arch == "gemma2":
        # llama.cpp's Gemma 2 always alternates local and global layers; a window as long as
        # the context makes every layer global.
        writer.add_sliding_window(int(config.get("max_position_embeddings") or 8192))
    if arch == "gemma3":
        writer.add_rope_freq_base_swa(float(local_rope(config)["rope_theta"]))
    if arch == "gemma2":
        writer.add_attn_logit_softcapping(float(config.get("attn_logit_softcapping") or _NO_CAP))
        writer.add_final_logit_softcapping(float(config.get("final_logit_softcapping") or _NO_CAP))
    elif config.get("final_logit_softcapping"):
        writer.add_final_logit_softcapping(float(config["final_logit_softcapping"]))
