"""Speed levers of the training step; `docs/performance.md` has what each one measured.

- Padding-free batches (`pack_batch`): a micro-batch's examples are joined into one row
  with position ids restarting at 0 for each example and no attention mask. During
  training `varlen_sdpa` runs attention per example (flash sdpa on GPUs, grouped matmuls
  on CPUs); a model loaded with flash-attention uses its varlen kernel. No example attends
  to another, no compute is spent on padding, and memory grows with the examples' lengths,
  not with the row's. The label that would be predicted across a boundary is masked, so
  the loss equals the padded batch's loss.
- bf16 base weights with autocast, and no peft input casts (`skip_input_casts`): the
  frozen weights are not cast again every step, and LoRA inputs are not copied to fp32
  only for autocast to copy them back; the LoRA weights and their updates stay fp32.
- Loss on labelled positions only (`labelled_loss`): the LM head (vocab x hidden, a fifth
  of a small model's FLOPs) and the softmax over the vocabulary run only on positions that
  carry a label (assistant replies), never on prompts. Used for plain-head causal LMs.
- Liger kernels on CUDA when `liger-kernel` is installed (fused linear cross-entropy,
  RMSNorm, RoPE, SwiGLU); they replace `labelled_loss` there.
"""

from __future__ import annotations

import importlib.util

from backpropagate_core.runs.layout import IGNORE_INDEX  # noqa: E402 - labels of untrained tokens
LABEL_INDEX = "label_index"
"""Collated key: flat positions whose next token carries a label (computed on the CPU)."""
PACKED_LENGTHS = "packed_lengths"
"""Collated key: the lengths of the examples in a packed row, as ints (read by `varlen_sdpa`)."""

# Architectures whose logits are exactly lm_head(hidden): no soft-capping, scaling or bias.
_PLAIN_HEAD_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "phi3", "olmo2", "smollm3", "granite",
                               "gemma2", "gemma3_text"})
_SCALED_HEAD_ATTRS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def pack_batch(batch: list[dict], lengths: bool = False) -> dict:
    """One row holding every example of `batch`, with per-example position ids (and with
    `lengths`, the examples' lengths for `varlen_sdpa`)."""
    import torch

    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    for x in batch:
        n = len(x["input_ids"])
        ids += x["input_ids"]
        # The first token of an example is never a target: in a padded batch it has no
        # predecessor, and here its predecessor is the previous example's last token.
        labels += [IGNORE_INDEX] + list(x["labels"][1:])
        positions += range(n)
    sizes = [len(x["input_ids"]) for x in batch]
    bounds = torch.tensor([0] + sizes, dtype=torch.int32).cumsum(0, dtype=torch.int32)
    # The boundaries flash-attention's varlen kernel reads from the model kwargs; `varlen_sdpa`
    # reads the lengths as plain ints, which stay on the host when the batch moves to a GPU.
    packed = {"input_ids": torch.tensor([ids]), "labels": torch.tensor([labels]),
              "position_ids": torch.tensor([positions]), "use_cache": False,
              "cu_seq_lens_q": bounds, "cu_seq_lens_k": bounds,
              "max_length_q": max(sizes), "max_length_k": max(sizes)}
    if lengths:
        packed[PACKED_LENGTHS] = tuple(sizes)
    return packed


def varlen_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """Attention for a packed row: one causal call per example, so time and memory are the
    sum of the examples' squares rather than the square of the row (what a block mask over
    the whole row costs). On GPUs each call is sdpa's flash kernel; on CPUs plain matmuls
    (`grouped_causal_attention`). Anything that is not a packed row goes to transformers' sdpa."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    lengths = kwargs.pop(PACKED_LENGTHS, None)
    if lengths is None or query.shape[0] != 1 or query.shape[2] != key.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    # Sliding-window layers (Gemma 3's local ones) see only the last `window` tokens.
    window = kwargs.get("sliding_window")
    split = zip(query.split(lengths, 2), key.split(lengths, 2), value.split(lengths, 2))
    # split (not slicing): its backward is one concatenation, not a zero-filled copy per example
    matmuls = query.device.type == "cpu" and not (dropout and module.training)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    parts = [grouped_causal_attention(q, k, v, scale, window) if matmuls and q.shape[2] <= MATMUL_ATTENTION_MAX_LEN
             else _sdpa_causal(module, q, k, v, dropout, scaling, window)
             for q, k, v in split]
    return torch.cat(parts, dim=1), None


def _sdpa_causal(module, query, key, value, dropout: float, scaling, window: int | None):
    """One example's causal attention through sdpa; a mask only where a window cuts in."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    n = query.shape[2]
    if not window or n <= window:
        return sdpa_attention_forward(module, query, key, value, None, dropout=dropout, scaling=scaling,
                                      is_causal=True)[0]
    visible = ~hidden_positions(n, window, query.device)
    return sdpa_attention_forward(module, query, key, value, visible[None, None], dropout=dropout,
                                  scaling=scaling, is_causal=False)[0]


def hidden_positions(n: int, window: int | None, device=None):
    """(n, n) booleans, True where query i may not look at key j: the future, and with a
    sliding window every key `window` or more positions back (transformers' convention)."""
    import torch

    i = torch.arange(n, device=device)
    hidden = i[None, :] > i[:, None]
    if window:
        hidden |= i[None, :] <= i[:, None] - window
    return hidden


MATMUL_ATTENTION_MAX_LEN = 192
"""Longest example whose CPU attention runs as plain matmuls: they keep (length)^2 scores
per head for backward, and sdpa's flash kernel caught up with them at 256 tokens."""


def grouped_causal_attention(query, key, value, scaling: float, window: int | None = None):
    """Causal attention of one example as plain matmuls: (1, H, L, D) queries against
    (1, KV, L, D) keys and values, returned as (1, L, H, D) like transformers' sdpa.

    The query heads that share a key head are stacked into one matrix, so keys and values
    are never repeated. On CPUs this is faster than sdpa's flash kernel (whose backward is
    slow) for chat-length examples; the softmax runs in fp32.
    """
    import torch

    b, heads, n, d = query.shape
    groups = heads // key.shape[1]
    q = query.reshape(b, key.shape[1], groups * n, d)
    scores = torch.matmul(q, key.transpose(-1, -2)) * scaling
    hidden = hidden_positions(n, window, query.device)
    scores = scores.view(b, key.shape[1], groups, n, n).masked_fill(hidden, float("-inf"))
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
    out = torch.matmul(probs.view(b, key.shape[1], groups * n, n), value)
    return out.view(b, heads, n, d).transpose(1, 2)


VARLEN = "backpropagate_varlen_sdpa"


def use_varlen_attention(model) -> str | None:
    """Switch an sdpa model to `varlen_sdpa`; returns the implementation to restore, or
    None when the model uses another attention (flash-attention already handles packed rows)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    lm = causal_lm(model)
    previous = getattr(lm.config, "_attn_implementation", None)
    if previous != "sdpa":
        return None
    AttentionInterface.register(VARLEN, varlen_sdpa)
    ALL_MASK_ATTENTION_FUNCTIONS.register(VARLEN, sdpa_mask)  # masks for rows without lengths
    lm.set_attn_implementation(VARLEN)
    return previous


def restore_attention(model, previous: str | None) -> None:
    if previous is not None:
        causal_lm(model).set_attn_implementation(previous)


def label_index(labels) -> "torch.Tensor":  # noqa: F821
    """Flat indices of the positions whose next token is a target."""
    import torch.nn.functional as F

    shifted = F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]
    return (shifted.reshape(-1) != IGNORE_INDEX).nonzero().squeeze(-1)


def causal_lm(model):
    """The transformers CausalLM inside a peft / DDP / compiled wrapper."""
    seen = set()
    while id(model) not in seen:
        seen.add(id(model))
        if hasattr(model, "get_base_model"):
            model = model.get_base_model()
        elif hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
    return model


def plain_lm_head(model) -> bool:
    """Whether logits are exactly `lm_head(decoder(x))`, so `labelled_loss` may replace them."""
    import torch.nn as nn

    lm = causal_lm(model)
    config = getattr(lm, "config", None)
    if getattr(config, "model_type", None) not in _PLAIN_HEAD_TYPES:
        return False
    if any(getattr(config, name, None) not in (None, 1, 1.0) for name in _SCALED_HEAD_ATTRS):
        return False
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    inner = getattr(lm, getattr(lm, "base_model_prefix", "model"), None)
    return type(head) is nn.Linear and head.bias is None and isinstance(inner, nn.Module)


def labelled_loss(model, inputs: dict, num_items_in_batch=None):
    """Summed next-token cross-entropy over labelled positions, divided by the number of
    labelled tokens in the whole accumulated batch (or in this batch when not given).

    Same value as transformers' `ForCausalLMLoss`; the head and the vocabulary softmax
    only see rows that are targets.
    """
    import torch.nn.functional as F

    lm = causal_lm(model)
    labels = inputs.pop("labels")
    index = inputs.pop(LABEL_INDEX, None)
    inputs.pop("num_items_in_batch", None)
    decoder = getattr(lm, lm.base_model_prefix)
    hidden = decoder(**{**inputs, "use_cache": False}).last_hidden_state
    if index is None:
        index = label_index(labels)
    index = index.to(hidden.device)
    hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, index)
    targets = F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:].reshape(-1).index_select(0, index)
    logits = lm.get_output_embeddings()(hidden)
    loss = F.cross_entropy(logits.float(), targets, reduction="sum")
    divisor = num_items_in_batch if num_items_in_batch is not None else max(1, int(index.numel()))
    if hasattr(divisor, "to"):
        divisor = divisor.to(loss.device)
    return loss / divisor


def liger_available(device: str) -> bool:
    return device == "cuda" and importlib.util.find_spec("liger_kernel") is not None


def skip_input_casts(model, autocast: bool) -> list:
    """Under autocast, stop peft casting each LoRA input to the adapter's fp32 dtype: autocast
    casts it straight back to bf16/fp16 for the matmul, so the two copies per adapted layer
    (and their backward) are wasted. Returns the layers changed, for `restore_input_casts`."""
    if not autocast:
        return []
    changed = [m for m in model.modules() if getattr(m, "cast_input_dtype_enabled", False) is True]
    for module in changed:
        module.cast_input_dtype_enabled = False
    return changed


def restore_input_casts(changed: list) -> None:
    for module in changed:
        module.cast_input_dtype_enabled = True
