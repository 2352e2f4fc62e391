"""Smart defaults: every training setting the user left empty, chosen with a reason.

The choice depends on the hardware (device, memory, bf16 support) and on the dataset
(how many examples, how long they are). Each value comes with one line saying why, which
the CLI prints, the UI shows as a caption and the run store keeps.
"""

from __future__ import annotations

import math
import platform
from dataclasses import dataclass, field
from pathlib import Path

from backpropagate_core.config import LoraSettings, TrainingSettings
from backpropagate_core.training import batching
from backpropagate_core.training.preference import PREFERENCE_METHODS


@dataclass
class Hardware:
    device: str
    """"cuda", "mps" or "cpu"."""
    name: str
    memory_gb: float
    """Free accelerator memory, or total RAM on CPU."""
    bf16: bool
    """Whether bf16 math is fast here (Ampere+ GPUs, CPUs with AVX512-BF16 or AMX)."""
    count: int = 1


def detect_hardware() -> Hardware:
    import psutil
    import torch

    if torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info(0)
        return Hardware("cuda", torch.cuda.get_device_name(0), free / 2**30,
                        torch.cuda.is_bf16_supported(), torch.cuda.device_count())
    ram = psutil.virtual_memory().total / 2**30
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return Hardware("mps", "Apple GPU", ram, False)
    return Hardware("cpu", platform.processor() or platform.machine(), ram, cpu_has_bf16())


def cpu_has_bf16() -> bool:
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return False
    flags = cpuinfo.read_text(errors="ignore")
    return "avx512_bf16" in flags or "amx_bf16" in flags


@dataclass
class Resolved:
    training: TrainingSettings
    lora: LoraSettings
    reasons: dict[str, str] = field(default_factory=dict)
    device: str = "cpu"


def resolve(training: TrainingSettings, lora: LoraSettings, hw: Hardware, *, n_train: int,
            token_lengths: list[int], model_params_b: float, model_max_len: int | None) -> Resolved:
    """Fill every None in `training` and explain each value; explicit values are kept."""
    t = training.model_copy()
    why: dict[str, str] = {}

    def pick(name: str, value, reason: str) -> None:
        if getattr(t, name) is None:
            setattr(t, name, value)
            why[name] = reason
        else:
            why[name] = "set by you"

    pairs = t.method in PREFERENCE_METHODS
    pick("max_seq_len", *_seq_len(token_lengths, hw, model_max_len))
    if t.batch_size is None and t.packing and not pairs:
        # Packed rows cost what their tokens cost: fill each micro-batch to a token budget.
        why["batch_size"] = "empty: each micro-batch is filled to batch_tokens"
        lengths = [min(n, t.max_seq_len) for n in token_lengths]
        pick("batch_tokens", *_batch_tokens(hw, model_params_b, t.max_seq_len))
        per = batching.per_group(lengths, t.batch_tokens, t.seed, hw.device)
        pick("grad_accum", *_grad_accum_tokens(per, n_train, hw.device))
        effective = round(per * t.grad_accum, 1)
    else:
        # A pair trains on two sequences, its chosen and its rejected answer.
        pick("batch_size", *_batch_size(hw, model_params_b, (t.max_seq_len or 0) * (2 if pairs else 1) or None))
        pick("grad_accum", *_grad_accum(t.batch_size, n_train))
        effective = t.batch_size * t.grad_accum
    if t.steps is None and t.epochs is not None:
        pick("steps", max(1, math.ceil(n_train * t.epochs / effective)),
             f"{t.epochs:g} epochs over {n_train} examples at {effective} per step")
    elif pairs:
        pick("steps", *_preference_steps(n_train, effective))
    else:
        pick("steps", *_steps(n_train, sum(token_lengths), effective, hw))
    if pairs:
        pick("learning_rate", *_preference_rate(t.method, lora.r, model_params_b, n_train))
        pick("beta", BETA[t.method], BETA_REASON[t.method])
        if t.method == "dpo":
            pick("sft_weight", 1.0, "DPO alone ranked the answers but still gave the rejected style "
                                    "(bench/preference.py); learning the chosen answers too makes it give them")
    else:
        pick("learning_rate", *_learning_rate(lora.r, model_params_b))
    pick("save_steps", max(1, t.steps // 5), "about five checkpoints per run")
    pick("eval_steps", max(1, t.steps // 10), "about ten held-out evaluations per run")
    pick("gradient_checkpointing", *_checkpointing(hw, model_params_b))
    if t.precision == "auto":
        t.precision, why["precision"] = _precision(hw)
    else:
        why["precision"] = "set by you"
    return Resolved(t, lora, why, hw.device)


def _seq_len(lengths: list[int], hw: Hardware, model_max: int | None) -> tuple[int, str]:
    cap = 4096 if hw.device == "cuda" else 1024
    if model_max:
        cap = min(cap, model_max)
    if not lengths:
        return min(512, cap), "no token statistics; a common default"
    ordered = sorted(lengths)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    value = min(cap, max(64, 64 * math.ceil(p99 / 64)))
    return value, f"covers 99% of examples (p99 = {p99} tokens), capped at {cap} on {hw.device}"


def _batch_size(hw: Hardware, params_b: float, seq_len: int | None) -> tuple[int, str]:
    if hw.device != "cuda":
        return 4, f"{hw.device}: small batches keep step time short and memory low"
    from backpropagate_core.training.estimate import largest_batch

    batch = largest_batch(params_b, seq_len or 1024, hw.memory_gb)
    return batch, f"largest batch that fits {hw.memory_gb:.0f} GB free VRAM with a 15% margin"


def _grad_accum(batch: int, n_train: int) -> tuple[int, str]:
    accum = max(1, batching.target_examples(n_train) // batch)
    return accum, f"reaches an effective batch of {batch * accum} examples per optimizer step"


def _batch_tokens(hw: Hardware, params_b: float, seq_len: int) -> tuple[int, str]:
    fits = None
    if hw.device == "cuda":
        from backpropagate_core.training.estimate import largest_batch

        fits = largest_batch(params_b, seq_len, hw.memory_gb)
    return batching.budget(hw.device, seq_len, fits)


def _grad_accum_tokens(per_group: float, n_train: int, device: str) -> tuple[int, str]:
    accum = batching.accumulation(per_group, batching.target_examples(n_train))
    return accum, (f"~{per_group:.1f} examples fill a micro-batch (at most {batching.example_cap(n_train, device)}); "
                   f"an optimizer step averages ~{per_group * accum:.0f} examples")


EPOCHS = ((100, 10), (500, 5), (2000, 3), (10000, 2))
"""(up to N examples, passes): a few facts need many passes to be learned, a big set few;
early stopping on the held-out score ends the run sooner when more would only over-fit."""
TOKEN_BUDGET = {"cuda": 50_000_000, "cpu": 2_000_000}
"""Most tokens a default run trains on (the steps are cut to fit), so a large dataset
does not default to days of training: ~3 hours at ~200 tokens/s on a CPU."""


def _steps(n_train: int, n_tokens: int, effective: int, hw: Hardware) -> tuple[int, str]:
    epochs = next((e for limit, e in EPOCHS if n_train <= limit), 1)
    steps = max(10, math.ceil(n_train * epochs / effective))
    reason = f"{epochs} epoch(s) over {n_train} examples at {effective} per step"
    budget = TOKEN_BUDGET["cuda" if hw.device == "cuda" else "cpu"]
    per_step = n_tokens / max(1, n_train) * effective
    if per_step and steps * per_step > budget:
        steps = max(10, int(budget / per_step))
        reason += f", cut to {budget / 1e6:g}M tokens on {hw.device}"
    return min(steps, 20000), reason


def _learning_rate(r: int, params_b: float) -> tuple[float, str]:
    """LoRA rates that learned new facts at rank 16 (alpha 32): higher for small models,
    whose updates are smaller relative to their weights."""
    lr = 1e-3 if params_b < 1 else 4e-4 if params_b < 4 else 2e-4 if params_b < 15 else 1e-4
    if r >= 64:
        lr /= 2
    return lr, f"LoRA rate for a {params_b:.3g}B-parameter model at rank {r}"


PREFERENCE_EPOCHS = 2
"""Passes over the pairs: preference training moves a model that already answers, so it
needs fewer passes than learning new facts (one pass changed the style in the benchmark),
and more would push it far from where it started."""
BETA = {"dpo": 0.1, "orpo": 0.1}
BETA_REASON = {
    "dpo": "DPO's usual strength: the model may drift moderately from where it started",
    "orpo": "ORPO's usual weight of the preference term next to learning the chosen answers",
}


CORRECTIONS = 20
"""Fewer pairs than this are a handful of corrections (the chat's feedback): each answer
is to be given as written, so they are taught like facts, with the SFT rate and
CORRECTION_EPOCHS passes; on bench/feedback_loop.py 4 corrections were given word for
word after that, and not at all with the settings for larger preference sets."""
CORRECTION_EPOCHS = 20


def _preference_steps(n_pairs: int, effective: int) -> tuple[int, str]:
    if n_pairs < CORRECTIONS:
        steps = math.ceil(n_pairs * CORRECTION_EPOCHS / effective)
        return steps, f"{CORRECTION_EPOCHS} epochs over {n_pairs} pairs: few pairs are corrections to learn word for word"
    steps = max(10, math.ceil(n_pairs * PREFERENCE_EPOCHS / effective))
    return min(steps, 20000), f"{PREFERENCE_EPOCHS} epochs over {n_pairs} pairs at {effective} per step"


def _preference_rate(method: str, r: int, params_b: float, n_pairs: int) -> tuple[float, str]:
    """A fifth of the SFT rate: the model already answers and only its choice between two
    answers moves; on bench/preference.py 2e-4 changed SmolLM2-135M's style within an
    epoch, while 5e-4 drove the preference loss to zero in a few steps. A handful of
    corrections gets the SFT rate (see CORRECTIONS)."""
    sft, _ = _learning_rate(r, params_b)
    if n_pairs < CORRECTIONS:
        return sft, f"the SFT rate for a {params_b:.3g}B-parameter model: {n_pairs} pairs are corrections to learn"
    return sft / 5, f"{method.upper()} rate for LoRA on a {params_b:.3g}B-parameter model at rank {r}"


def _checkpointing(hw: Hardware, params_b: float) -> tuple[bool, str]:
    if hw.device == "cuda" and (params_b >= 3 or hw.memory_gb < 12):
        return True, "saves activation memory on this GPU at ~20% extra compute"
    return False, "memory is ample for this model; faster without it"


def _precision(hw: Hardware) -> tuple[str, str]:
    if hw.bf16:
        return "bf16", f"{hw.name or hw.device} has fast bf16 math"
    if hw.device == "cuda":
        return "fp16", "this GPU lacks bf16; fp16 with loss scaling"
    return "fp32", f"{hw.device} has no fast bf16; full precision"
