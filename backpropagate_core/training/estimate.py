"""Memory needed to LoRA-train a model, and the largest batch that fits.

The estimate adds up what a training step holds at its peak:

- weights: every parameter in the load dtype; 4-bit keeps the decoder linears at ~4.5
  bits (NF4 plus double-quantized scales) and embeddings / LM head in bf16;
- LoRA: the adapter weights, their gradients and two AdamW moments, all fp32 (16 bytes);
- activations saved for the backward pass, per token and layer, from the tensors a
  llama-style block keeps (two RMSNorms in fp32, the projection inputs LoRA needs, q/k/v
  and the attention output, the four MLP intermediates); with gradient checkpointing
  only each layer's input is kept, plus one layer's worth during recomputation;
- logits: labelled tokens x vocabulary x 12 bytes: at the peak of the backward pass the
  saved fp32 log-softmax, its gradient and the fp32 gradient of the logits (Liger's or
  Unsloth's fused loss on a GPU needs far less);
- overhead: the CUDA context and allocator slack, or on a CPU the Python process with
  torch and transformers loaded.

The per-token activation bytes were checked against the tensors autograd really saves
(tests/test_estimate.py); the totals against peak RSS of real CPU runs, which need an
allocator allowance on top (`bench/memory.py` prints estimate against measurement;
`docs/performance.md` has the table).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from backpropagate_core.model.presets import ModelShape, guess_shape, shape_from_config, shape_of  # noqa: F401
from backpropagate_core.training.speed import MATMUL_ATTENTION_MAX_LEN, liger_available

BYTES = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "4bit": 0.5625}
GB = 2**30
CUDA_OVERHEAD_GB = 0.75
"""CUDA context, cuBLAS workspaces and allocator fragmentation."""
CPU_OVERHEAD_GB = 0.9
"""A Python process with torch, transformers and peft imported, before any model."""
LOGIT_BYTES = 12.0
ALLOCATOR_SLACK = {"cpu": 1.5, "cuda": 1.15, "cuda+fused": 1.45}
"""Peak memory over the live tensors of a step: on a CPU, glibc keeps freed blocks of the
varying batch shapes (fitted to peak RSS of smollm2-135m runs); on a GPU, PyTorch's caching
allocator rounds and fragments. With Liger's fused kernels the count of saved tensors below
is coarser, and the factor was fitted to `torch.cuda.max_memory_allocated` of a 1B llama
shape on an H200 (1.37, rounded up so the estimate stays above the measurement)."""


@dataclass
class MemoryEstimate:
    weights_gb: float
    lora_gb: float
    optimizer_gb: float
    activations_gb: float
    logits_gb: float
    overhead_gb: float
    total_gb: float

    def to_dict(self) -> dict:
        return asdict(self)


def activation_bytes_per_token(shape: ModelShape, *, act_bytes: float, fp32_norms: bool = True,
                               gradient_checkpointing: bool = False, fused_kernels: bool = False) -> float:
    """Bytes the backward pass keeps per token, summed over layers.

    `fused_kernels` (Liger): RMSNorm keeps only its input, SwiGLU only its two inputs."""
    h, i = shape.hidden, shape.intermediate
    q, kv = shape.heads * shape.hd, shape.kv_heads * shape.hd
    if fused_kernels:
        norms, mlp = 2 * h * act_bytes, 2 * i
    else:
        norms = 2 * h * (8 + act_bytes) if fp32_norms else 2 * h * 2 * act_bytes
        mlp = 4 * i
    # projection inputs (x, attn out), q/k/v, attention output, the MLP intermediates
    layer = norms + act_bytes * (h + q + q + 2 * kv + q + mlp)
    if gradient_checkpointing:
        return shape.layers * 4 * h + layer
    return shape.layers * layer


def estimate(params_b: float | None = None, seq_len: int = 1024, batch: int = 1, *,
             shape: ModelShape | None = None, dtype: str = "bf16", r: int = 16,
             targets: list[str] | None = None, gradient_checkpointing: bool = False,
             device: str = "cuda", label_fraction: float = 1.0, layers: int | None = None,
             hidden: int | None = None, fused_kernels: bool | None = None) -> MemoryEstimate:
    """Peak memory in GB for LoRA training with these settings.

    `label_fraction` is the share of tokens that carry a label (the LM head only runs on
    those); `dtype` is the weight dtype: fp32, bf16, fp16 or 4bit. `fused_kernels`: Liger's
    kernels, which training uses on CUDA when installed (None: whether that is the case).
    """
    if fused_kernels is None:
        fused_kernels = liger_available(device)
    params = shape.params if shape is not None else (params_b or 1.0) * 1e9
    if shape is None:
        shape = guess_shape(params_b or 1.0)
        if layers or hidden:
            shape = ModelShape(layers or shape.layers, hidden or shape.hidden,
                               int((hidden or shape.hidden) * 2.7), shape.heads, shape.kv_heads, shape.vocab)
    if dtype == "4bit":
        embed = shape.vocab * shape.hidden * (1 if shape.tied else 2)
        weights = (params - embed) * BYTES["4bit"] + embed * 2
    else:
        weights = params * BYTES[dtype]
    lora_params = shape.lora_params(r, targets)
    tokens = seq_len * batch
    act_bytes = 4.0 if dtype == "fp32" else 2.0
    activations = tokens * activation_bytes_per_token(
        shape, act_bytes=act_bytes, gradient_checkpointing=gradient_checkpointing, fused_kernels=fused_kernels)
    if device != "cuda" and seq_len <= MATMUL_ATTENTION_MAX_LEN:
        # short examples' CPU attention keeps its scores: bf16 scores, fp32 and bf16 probabilities
        activations += tokens * (1 if gradient_checkpointing else shape.layers) * shape.heads * seq_len * 8
    if fused_kernels:  # the fused linear cross-entropy holds a chunk of about hidden/vocab of the rows
        logits = tokens * shape.hidden * LOGIT_BYTES
    else:
        logits = tokens * max(0.0, min(1.0, label_fraction)) * shape.vocab * LOGIT_BYTES
    slack = ALLOCATOR_SLACK[("cuda+fused" if fused_kernels else "cuda") if device == "cuda" else "cpu"]
    activations, logits = activations * slack, logits * slack
    overhead = (CUDA_OVERHEAD_GB if device == "cuda" else CPU_OVERHEAD_GB) * GB + 0.05 * weights
    total = weights + lora_params * 4 + lora_params * 12 + activations + logits + overhead
    return MemoryEstimate(weights / GB, lora_params * 4 / GB, lora_params * 12 / GB, activations / GB,
                          logits / GB, overhead / GB, total / GB)


def largest_batch(params_b: float | None, seq_len: int, free_gb: float, *, margin: float = 0.15,
                  dtype: str = "bf16", gradient_checkpointing: bool = False, max_batch: int = 64,
                  shape: ModelShape | None = None, **kw) -> int:
    """The largest power-of-two batch whose estimate fits `free_gb` with a margin; at least 1."""
    budget = free_gb * (1 - margin)
    batch = 1
    while batch * 2 <= max_batch and estimate(
            params_b, seq_len, batch * 2, shape=shape, dtype=dtype,
            gradient_checkpointing=gradient_checkpointing, **kw).total_gb <= budget:
        batch *= 2
    return batch
