"""Memory needed to LoRA-train a model, and the largest batch that fits.

Weights by dtype (or 4-bit), LoRA parameters with their fp32 AdamW state and gradients,
and activations per token. The activation constant is per layer and hidden unit and was
chosen to over- rather than under-estimate; the result is checked against measured
peaks in tests and `bench/`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

BYTES = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "4bit": 0.56}
# Saved activations per token per layer, in units of hidden size, for a llama-style block
# (attention + MLP, bf16). Gradient checkpointing keeps only the layer inputs.
_ACT_PER_LAYER = 34.0
_ACT_PER_LAYER_CKPT = 2.0


@dataclass
class MemoryEstimate:
    weights_gb: float
    lora_gb: float
    optimizer_gb: float
    activations_gb: float
    overhead_gb: float
    total_gb: float

    def to_dict(self) -> dict:
        return asdict(self)


def _shape(params_b: float) -> tuple[int, int]:
    """A plausible (layers, hidden) for a model size when the config is not at hand."""
    hidden = int(1024 * (params_b ** 0.4) * 1.6) // 64 * 64 or 576
    layers = max(12, min(80, int(params_b ** 0.35 * 24)))
    return layers, max(hidden, 256)


def estimate(params_b: float, seq_len: int, batch: int, *, dtype: str = "bf16", r: int = 16,
             gradient_checkpointing: bool = False, layers: int | None = None,
             hidden: int | None = None) -> MemoryEstimate:
    """Peak memory in GB for LoRA training with these settings."""
    guess_layers, guess_hidden = _shape(params_b)
    layers = layers or guess_layers
    hidden = hidden or guess_hidden
    weights = params_b * 1e9 * BYTES[dtype]
    # Seven adapted projections per layer, each with A (r x in) and B (out x r).
    lora_params = layers * 7 * 2 * r * hidden * 2
    lora = lora_params * 4
    optimizer = lora_params * 4 * 3  # gradients + two AdamW moments, fp32
    per_layer = _ACT_PER_LAYER_CKPT if gradient_checkpointing else _ACT_PER_LAYER
    act_bytes = 2.0 if dtype != "fp32" else 4.0
    activations = batch * seq_len * layers * hidden * per_layer * act_bytes
    gb = 2**30
    overhead = 0.6 * gb + 0.08 * weights  # CUDA context, allocator slack, logits buffer
    total = weights + lora + optimizer + activations + overhead
    return MemoryEstimate(weights / gb, lora / gb, optimizer / gb, activations / gb,
                          overhead / gb, total / gb)


def largest_batch(params_b: float, seq_len: int, free_gb: float, *, margin: float = 0.15,
                  dtype: str = "bf16", gradient_checkpointing: bool = False,
                  max_batch: int = 64) -> int:
    """The largest power-of-two batch whose estimate fits `free_gb` with a margin; at least 1."""
    budget = free_gb * (1 - margin)
    batch = 1
    while batch * 2 <= max_batch and estimate(
            params_b, seq_len, batch * 2, dtype=dtype,
            gradient_checkpointing=gradient_checkpointing).total_gb <= budget:
        batch *= 2
    return batch
