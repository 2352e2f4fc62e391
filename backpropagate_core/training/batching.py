"""Micro-batches filled to a token budget instead of a fixed number of examples.

With packed rows (`speed.pack_batch`) a micro-batch costs what its tokens cost, so a fixed
count of four examples makes a short-example step small: the same per-step costs
(optimizer, Python, kernel launches, the per-step share of hooks and logging) are paid
for a few hundred tokens. When the batch size is left empty, examples are instead grouped
up to a token budget chosen from the hardware (`budget`), so a dataset of short Q&A pairs
gets as many tokens per step as one of long documents.

The groups are made once per run from the examples' lengths, in an order shuffled with
the run's seed, so a resumed run rebuilds exactly the same groups; the trainer shuffles the
order of the groups every epoch.

How many examples an optimizer step averages over is kept as it was measured to learn
well, because fewer, larger steps learn less per example: on bench/throughput.py's short
chat rows (smollm2-135m, fp32), 160 examples in 8 steps of 20 reached an eval loss of
0.89 (0.88 at 4x the rate) against 0.80 in 40 steps of 4. So a micro-batch holds at most
`example_cap` examples: on a CPU the examples per optimizer step the fixed-batch defaults
used (4, or 8 from 200 examples), so the budget replaces gradient accumulation over small
micro-batches by one larger micro-batch and otherwise caps long examples; on a GPU, whose
kernels need large batches, up to `MAX_EXAMPLES`, while a pass over the data keeps at
least `STEPS_PER_EPOCH` steps.
"""

from __future__ import annotations

import math
import random

MAX_EXAMPLES = 32
"""Most examples in one micro-batch on a GPU."""
STEPS_PER_EPOCH = 25
"""Fewest micro-batches per pass over the data that `example_cap` leaves a dataset on a GPU."""
CPU_TOKENS = 1024
"""Tokens per micro-batch on a CPU: enough for the examples of one optimizer step of short
chat rows; a step's fixed cost (~0.4 s measured) is then paid once per step rather than once
per micro-batch of 4."""
GPU_MAX_TOKENS = 16384
"""Most tokens per micro-batch on a GPU, even where memory would allow more."""


def budget(device: str, seq_len: int, fits_batch: int | None = None) -> tuple[int, str]:
    """Tokens per micro-batch for `device`: on a GPU `fits_batch` rows of `seq_len` tokens
    (the largest batch the memory estimate fits); never below one whole example."""
    if device == "cuda" and fits_batch:
        tokens = min(GPU_MAX_TOKENS, fits_batch * seq_len)
        why = f"fills free GPU memory ({fits_batch} x {seq_len} tokens fit with a 15% margin)"
        if tokens < fits_batch * seq_len:
            why += f", capped at {GPU_MAX_TOKENS}"
    else:
        tokens = CPU_TOKENS
        why = (f"{device}: steps of ~{CPU_TOKENS} tokens spread each step's fixed cost, "
               "however short the examples")
    if tokens < seq_len:
        tokens, why = seq_len, "one example of the longest kept length"
    return tokens, why


def target_examples(n_train: int) -> int:
    """Fewest examples per optimizer step: 4 for small sets, which need many steps, else 8."""
    return 8 if n_train >= 200 else 4


def example_cap(n_train: int, device: str = "cpu") -> int:
    """Most examples in one micro-batch for a dataset of `n_train` examples on `device`."""
    if device != "cuda":
        return target_examples(n_train)
    return min(MAX_EXAMPLES, max(target_examples(n_train), n_train // STEPS_PER_EPOCH))


def token_groups(lengths: list[int], tokens: int, seed: int, *, padded: bool = False,
                 device: str = "cpu", max_examples: int | None = None) -> list[list[int]]:
    """Indices of `lengths` grouped into micro-batches of at most `tokens` tokens and
    `max_examples` examples (default: `example_cap` of the dataset on `device`).

    The order is shuffled with `seed`, then each group takes examples until the next one
    would not fit (an example longer than the budget gets a group of its own). `padded`
    counts a group as padded rows (examples x longest), for a collator that pads.
    """
    max_examples = max_examples or example_cap(len(lengths), device)
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    groups: list[list[int]] = []
    group: list[int] = []
    used = longest = 0
    for i in order:
        n = lengths[i]
        cost = (len(group) + 1) * max(longest, n) if padded else used + n
        if group and (cost > tokens or len(group) >= max_examples):
            groups.append(group)
            group, used, longest = [], 0, 0
        group.append(i)
        used += n
        longest = max(longest, n)
    if group:
        groups.append(group)
    return groups


def per_group(lengths: list[int], tokens: int, seed: int, device: str = "cpu") -> float:
    """Mean examples per micro-batch at `tokens` (what the effective batch is made of)."""
    if not lengths:
        return 1.0
    return len(lengths) / len(token_groups(lengths, tokens, seed, device=device))


def accumulation(examples_per_group: float, target: int) -> int:
    """Micro-batches per optimizer step so a step averages at least about `target` examples
    (10% short is close enough: the one partly filled group of a pass lowers the average of
    otherwise full groups, and should not add a micro-batch to every step)."""
    return max(1, math.ceil(0.9 * target / max(1.0, examples_per_group)))


class Groups:
    """A dataset whose items are whole micro-batches (lists of rows), for a batch size of 1."""

    def __init__(self, rows: list[dict], groups: list[list[int]]) -> None:
        self.rows = rows
        self.groups = groups

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, i: int) -> list[dict]:
        return [self.rows[j] for j in self.groups[i]]
