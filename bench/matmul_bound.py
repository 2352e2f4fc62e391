"""The fastest any exact LoRA step can be on this machine: its matrix products alone.

    python bench/matmul_bound.py [--model smollm2-135m] [--tokens 400] [--labelled 200]

Times, with torch on random tensors of the model's own shapes, the products a LoRA step
cannot avoid: every frozen linear layer forward and backward to its input for `--tokens`
tokens, the LM head forward and backward for the `--labelled` positions that carry a
label, and the rank-r LoRA products (forward, and backward to input and weights). Nothing
else: no attention, norms, activations, optimizer or Python. Tokens per second at that
time is a ceiling for any implementation that computes the same step in the same dtype;
`bench/throughput.py` reports what the training paths reach against it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _seconds(fn, repeat: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def products(config: dict, tokens: int, labelled: int, rank: int) -> list[tuple[str, int, int, int, int]]:
    """(name, m, k, n, times per step) of each product y[m, n] = x[m, k] w[k, n]."""
    h, inter = config["hidden_size"], config["intermediate_size"]
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or h // heads
    kv = config.get("num_key_value_heads", heads) * head_dim
    layers, vocab = config["num_hidden_layers"], config["vocab_size"]
    linears = {"q": (h, heads * head_dim), "k": (h, kv), "v": (h, kv), "o": (heads * head_dim, h),
               "gate": (h, inter), "up": (h, inter), "down": (inter, h)}
    out = []
    for name, (k, n) in linears.items():
        out += [(f"{name} forward", tokens, k, n, layers), (f"{name} backward to input", tokens, n, k, layers),
                (f"{name} LoRA A", tokens, k, rank, 3 * layers), (f"{name} LoRA B", tokens, rank, n, 3 * layers)]
    out += [("head forward", labelled, h, vocab, 1), ("head backward to input", labelled, vocab, h, 1)]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tokens", type=int, default=400, help="tokens per micro-batch [400]")
    parser.add_argument("--labelled", type=int, default=200, help="positions with a label [200]")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()

    import torch

    from backpropagate_core.model.loader import materialize, resolve_model

    config = json.loads((Path(materialize(resolve_model(args.model))) / "config.json").read_text())
    total = 0.0
    for name, m, k, n, times in products(config, args.tokens, args.labelled, args.rank):
        x, w = torch.randn(m, k), torch.randn(k, n)
        seconds = _seconds(lambda x=x, w=w: x @ w, args.repeat)
        total += seconds * times
        if "LoRA" not in name:
            print(f"{name:26s} [{m} x {k}] @ [{k} x {n}]: {2 * m * k * n / seconds / 1e9:6.1f} GFLOP/s")
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    peak = 2 * n ** 3 / _seconds(lambda: a @ b, 3) / 1e9
    print(f"square {n} x {n} fp32 peak: {peak:.1f} GFLOP/s on {torch.get_num_threads()} threads")
    print(f"products of one step: {total:.3f} s -> ceiling {args.tokens / total:.1f} tokens/s "
          f"({args.tokens} tokens, {args.labelled} labelled, LoRA r{args.rank})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
