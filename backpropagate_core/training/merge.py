"""SLAO merging of LoRA adapters, as pure functions of tensors.

SLAO ("Merge before Forget", arXiv 2512.23017) keeps one LoRA adapter across a series
of training runs. A LoRA layer adds B·A to a frozen weight (A: r × in, B: out × r).
After run i the merged adapter takes the new A as it is (the asymmetric part: A learns
a basis that transfers) and moves B towards the new B by a shrinking step λ(i), so later
runs cannot wipe out what earlier ones wrote into B:

    A_merged ← A_i
    B_merged ← B_merged + λ(i) · (B_i − B_merged)

Before the next run, A starts from an orthonormal basis of the merged A's row space
(`orthonormal_init`) and B from the previous run's fine-tuned B.

Adapters are the dicts peft's `get_peft_model_state_dict` returns: names ending in
`lora_A.weight` / `lora_B.weight` mapped to tensors. Nothing here touches a model.
"""

from __future__ import annotations

import math

import torch

from backpropagate_core.errors import BackpropError

SCHEDULES = ("inv_sqrt", "inv", "constant")
_A_MARKERS = (".lora_A.", ".lora_embedding_A.")


def is_lora_a(key: str) -> bool:
    """Whether a peft state-dict key holds a LoRA down-projection (A, or the embedding A)."""
    return any(marker in key for marker in _A_MARKERS)


def orthonormal_init(a_merged: torch.Tensor) -> torch.Tensor:
    """An r × in matrix with orthonormal rows spanning the row space of `a_merged`.

    QR of Aᵀ: Aᵀ = Q R with Q (in × r) orthonormal columns; return Qᵀ. QR is unique only
    up to the sign of each column, so columns are flipped where diag(R) < 0, making the
    result a deterministic function of A (the same A always gives the same init).
    """
    r, n_in = a_merged.shape
    if r > n_in:
        raise BackpropError("CONFIG_INVALID",
                            f"LoRA rank {r} is larger than the layer's input size {n_in}",
                            hint="Use a LoRA rank no larger than the model's smallest projection input.")
    work = a_merged.detach()
    if work.dtype not in (torch.float32, torch.float64):  # QR needs at least fp32 (bf16 weights)
        work = work.to(torch.float32)
    q, r_mat = torch.linalg.qr(work.T, mode="reduced")
    signs = torch.sign(torch.diagonal(r_mat))
    signs[signs == 0] = 1.0
    return (q * signs).T.contiguous().to(a_merged.dtype)


def slao_init(merged: dict[str, torch.Tensor], last: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Starting adapter for the next run: A = orthonormal_init(A_merged), B = the previous
    run's fine-tuned B (`last`)."""
    return {k: orthonormal_init(merged[k]) if is_lora_a(k) else v.detach().clone()
            for k, v in last.items()}


def lambda_schedule(i: int, kind: str = "inv_sqrt", c: float = 0.5) -> float:
    """The merge step λ(i) for run i (1-based): 1/√i, 1/i, or the constant c ∈ (0, 1].

    All three are non-increasing in i and lie in (0, 1]; λ(1) = 1 for the first two, so
    the first run's B is taken whole.
    """
    if i < 1:
        raise ValueError(f"run index starts at 1, got {i}")
    if kind == "inv_sqrt":
        return 1.0 / math.sqrt(i)
    if kind == "inv":
        return 1.0 / i
    if kind == "constant":
        if not 0.0 < c <= 1.0:
            raise BackpropError("CONFIG_INVALID", f"the constant merge step must be in (0, 1], got {c}")
        return float(c)
    raise BackpropError("CONFIG_INVALID",
                        f"unknown merge schedule {kind!r}; expected one of {', '.join(SCHEDULES)}")


def slao_merge(merged: dict[str, torch.Tensor], new: dict[str, torch.Tensor], i: int,
               schedule: str = "inv_sqrt", c: float = 0.5) -> dict[str, torch.Tensor]:
    """The merged adapter after run i: A ← A_i; B ← B_merged + λ(i)·(B_i − B_merged).

    Returns a new dict and never changes `merged` or `new`, so when the result is not
    finite (MERGE_NONFINITE) the caller still holds the previous merge intact.
    """
    if merged.keys() != new.keys():
        missing = sorted(merged.keys() ^ new.keys())[:3]
        raise ValueError(f"adapters do not match; keys only in one of them: {missing}")
    lam = lambda_schedule(i, schedule, c)
    out = {}
    for key, value in new.items():
        if is_lora_a(key):
            out[key] = value.detach().clone()
        else:
            base = merged[key].detach()
            out[key] = base + lam * (value.detach().to(base.dtype) - base)
    check_finite(out, f"the merge after run {i}")
    return out


def check_finite(state: dict[str, torch.Tensor], what: str) -> None:
    """Raise MERGE_NONFINITE naming the first tensor with a NaN or an infinity."""
    for key, value in state.items():
        if not torch.isfinite(value).all():
            raise BackpropError("MERGE_NONFINITE", f"{what} has NaN or infinite values in {key}")
