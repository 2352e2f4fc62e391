"""Where a training step's time goes on short chat rows: the torch profiler around `fit`.

    python bench/profile_step.py [--model smollm2-135m] [--steps 8] [--data bench/data/facts.jsonl]

Trains `--steps` steps through the same `trainer.fit` every run uses (LoRA r16 on every
linear layer, batch 4, the run's own defaults otherwise) and prints: wall time per step,
the share of CPU time in matrix products, in other forward/backward ops, in the
optimizer, and what is left (Python, dispatch, callbacks, data), plus the top operators.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).parent / "data" / "facts.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    os.environ.setdefault("BACKPROPAGATE_HOME", tempfile.mkdtemp(prefix="bench-profile-"))

    import torch
    from torch.profiler import ProfilerActivity, profile

    from backpropagate_core.training import pipeline, trainer
    from backpropagate_core.training.run_config import build_config

    config = build_config(args.model, args.data, None, steps=args.steps, batch_size=4, grad_accum=1,
                          val_fraction=0.0, save_steps=10_000, report_to="none", eval_samples=0)
    log = lambda msg, level="INFO": None  # noqa: E731
    prep = pipeline.prepare(config, log)
    model = pipeline.load_model(config, prep, log)
    t = prep.resolved.training
    tokens = sum(r["n_tokens"] for r in prep.train_rows) / len(prep.train_rows)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        started = time.perf_counter()
        outcome = trainer.fit(model, prep.tokenizer, prep.train_rows, [], t, run_id="profile",
                              output_dir=Path(tempfile.mkdtemp()), sink=lambda e: None, resume_from=None,
                              cancel_flag=Path(tempfile.mkdtemp()) / "CANCEL")
        wall = time.perf_counter() - started
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) / 1e6
    matmul = sum(e.self_cpu_time_total for e in events if e.key in ("aten::mm", "aten::addmm", "aten::bmm",
                                                                        "aten::matmul", "aten::linear")) / 1e6
    optim = sum(e.self_cpu_time_total for e in events if "adam" in e.key.lower() or "foreach" in e.key) / 1e6
    print(f"{args.model}, {t.precision}, batch {t.batch_size}, ~{tokens:.0f} tokens per example, "
          f"{outcome.step} steps: {wall / outcome.step:.2f} s per step, {outcome.tokens_per_s or 0:.0f} tok/s, "
          f"torch threads {torch.get_num_threads()}")
    print(f"  profiled op time {total:.1f} s of {wall:.1f} s wall (2 threads can make op time exceed wall)")
    print(f"  matrix products  {matmul:6.1f} s  {100 * matmul / total:5.1f} %")
    print(f"  optimizer        {optim:6.1f} s  {100 * optim / total:5.1f} %")
    rest = total - matmul - optim
    print(f"  other ops        {rest:6.1f} s  {100 * rest / total:5.1f} %")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
