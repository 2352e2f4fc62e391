"""The memory estimator (`backpropagate_core.training.estimate`) against what training really used.

Each configuration trains a few steps through `training.trainer.fit` in its own process on
synthetic examples of exactly `seq_len` tokens (loss on the second half, like a chat
reply) and reports its peak: `torch.cuda.max_memory_allocated` (+ the CUDA context) on a
GPU, peak RSS of the process on a CPU. The estimate is computed for the same settings.

    python bench/memory.py            # tiny model and smollm2-135m, several batch/length pairs
    python bench/memory.py --quick    # two small configurations
    python bench/memory.py --config /tmp/1b-random:2048:8:bf16:gc   # model:seq:batch:weights[:gc]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIGS = [  # model, seq_len, batch, weights
    ("tiny", 128, 4, "fp32"), ("tiny", 512, 8, "fp32"),
    ("smollm2-135m", 256, 4, "fp32"), ("smollm2-135m", 256, 4, "bf16"),
    ("smollm2-135m", 512, 8, "bf16"), ("smollm2-135m", 1024, 8, "bf16"),
]
QUICK = [("tiny", 128, 4, "fp32"), ("smollm2-135m", 256, 2, "bf16")]


def _model_path(name: str) -> str:
    if name != "tiny":
        return name
    from tests.tiny import build_model

    path = Path(tempfile.gettempdir()) / "backpropagate-bench-tiny"
    if not (path / "config.json").is_file():
        build_model(path, hidden=256, layers=4, heads=4, kv_heads=2)
    return str(path)


def parse_config(text: str) -> tuple:
    """"model:seq:batch:weights[:gc]" -> (model, seq, batch, weights, gradient checkpointing)."""
    model, seq_len, batch, weights, *rest = text.rsplit(":", 4) if text.endswith(":gc") else text.rsplit(":", 3)
    return model, int(seq_len), int(batch), weights, rest == ["gc"]


def child(model: str, seq_len: int, batch: int, weights: str, packing: bool, checkpointing: bool = False) -> dict:
    import torch

    from backpropagate_core.config import TrainingSettings
    from backpropagate_core.training.trainer import fit
    from backpropagate_core.model.loader import add_lora, load_model, load_tokenizer

    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if weights == "bf16" else torch.float32
    tokenizer = load_tokenizer(model)
    vocab = len(tokenizer)
    g = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(batch * 4):
        ids = torch.randint(10, vocab, (seq_len,), generator=g).tolist()
        rows.append({"input_ids": ids, "labels": [-100] * (seq_len // 2) + ids[seq_len // 2:],
                     "n_tokens": seq_len})
    peft_model = add_lora(load_model(model, dtype=dtype, device_map="cuda" if cuda else None), 16, 32, 0.0)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t = TrainingSettings(steps=3, batch_size=batch, grad_accum=1, learning_rate=1e-4, warmup_ratio=0.0,
                         max_seq_len=seq_len, save_steps=10**6, val_fraction=0.0, report_to="none",
                         precision="bf16" if weights == "bf16" or cuda else "fp32",
                         gradient_checkpointing=checkpointing, packing=packing)
    out = Path(tempfile.mkdtemp(prefix="bench-mem-"))
    fit(peft_model, tokenizer, rows, [], t, run_id="mem", output_dir=out / "checkpoints",
        sink=lambda e: None, resume_from=None, cancel_flag=out / "CANCEL")
    if cuda:
        return {"measured_gb": torch.cuda.max_memory_allocated() / 2**30, "device": "cuda"}
    return {"measured_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "device": "cpu"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--padded", action="store_true", help="padded batches instead of packed rows")
    parser.add_argument("--config", action="append", type=parse_config,
                        help="model:seq:batch:weights[:gc] (model: preset, folder or 'tiny'); repeatable")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(*json.loads(args.child))), flush=True)
        return 0

    from backpropagate_core.training.estimate import estimate, shape_of

    rows = []
    print(f"{'model':14s} {'seq':>5s} {'batch':>5s} {'weights':>7s} {'estimate GB':>11s} {'measured GB':>11s} "
          f"{'est/meas':>8s}  load")
    configs = args.config or [(*c, False) for c in (QUICK if args.quick else CONFIGS)]
    for name, seq_len, batch, weights, checkpointing in configs:
        model = _model_path(name)
        spec = json.dumps([model, seq_len, batch, weights, not args.padded, checkpointing])
        proc = subprocess.run([sys.executable, __file__, "--child", spec], capture_output=True, text=True,
                              env={**os.environ, "PYTHONWARNINGS": "ignore", "HF_HUB_OFFLINE": "1"})
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if not lines:
            print(f"{name}: failed: {proc.stderr.strip().splitlines()[-1:]}")
            continue
        result = json.loads(lines[-1][7:])
        cuda = result["device"] == "cuda"
        est = estimate(None, seq_len, batch, shape=shape_of(model), dtype=weights, device=result["device"],
                       label_fraction=0.5, gradient_checkpointing=checkpointing)
        # max_memory_allocated leaves out the CUDA context the estimate includes.
        estimated = est.total_gb - (est.overhead_gb if cuda else 0.0)
        name = Path(name).name + (" gc" if checkpointing else "")
        row = {"model": name, "seq_len": seq_len, "batch": batch, "weights": weights,
               "estimate_gb": estimated, "measured_gb": result["measured_gb"], "device": result["device"],
               "load": os.getloadavg()[0], "breakdown": est.to_dict()}
        rows.append(row)
        print(f"{name:14s} {seq_len:5d} {batch:5d} {weights:>7s} {estimated:11.2f} {result['measured_gb']:11.2f} "
              f"{estimated / result['measured_gb']:8.2f}  {row['load']:.2f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
