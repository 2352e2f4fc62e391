"""Feedback-loop benchmark: do a few corrections in the chat change what the next model says?

    python bench/feedback_loop.py [--model smollm2-135m] [--out results.json]

What a user does on the Export page, through the same engine calls: a short SFT run on
`examples/quickstart.jsonl`, its greedy answers to four questions, a correction written
for each (the feedback file of the run), then "Train on my feedback": a DPO run with
every default from that run's adapter on the pairs. Prints, for each question, the
answer before and after and whether the new answer is the correction (exact match after
whitespace, and the answer-score of `eval.metrics`), plus wall times. ~5 minutes on 2
idle CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORRECTIONS = [
    ("How long should sourdough rise?", "Four to six hours at room temperature, until doubled."),
    ("What flour is best for pizza?", "Tipo 00 flour, for a thin and crisp crust."),
    ("How do I store fresh bread?", "In a paper bag at room temperature for up to two days."),
    ("Why is my bread dense?", "It was under-proofed: let the dough rise longer."),
]


def answers(model: str, adapter: Path, prompts: list[str]) -> list[str]:
    from peft import PeftModel

    from backpropagate_core.eval import answers as answers_mod
    from backpropagate_core.model import loader

    base = loader.load_model(model)
    tuned = PeftModel.from_pretrained(base, str(adapter))
    tokenizer = loader.load_tokenizer(model)
    probes = [answers_mod.Probe([{"role": "user", "content": p}], "") for p in prompts]
    return answers_mod.greedy_answers(tuned, tokenizer, probes, 48)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="bp-feedback-"))
    os.environ["BACKPROPAGATE_HOME"] = str(home)
    from backpropagate_core import Trainer
    from backpropagate_core.data import feedback
    from backpropagate_core.eval import metrics
    from backpropagate_core.runs.store import RunStore

    prompts = [q for q, _ in CORRECTIONS]
    t0 = time.time()
    sft = Trainer(args.model).train(str(ROOT / "examples" / "quickstart.jsonl"), steps=10, val_fraction=0.0)
    t_sft = time.time() - t0
    before = answers(args.model, sft.adapter_path, prompts)
    run = RunStore().get(sft.run_id)
    for (question, wanted), said in zip(CORRECTIONS, before):
        feedback.record(run.run_dir, [{"role": "user", "content": question}], said, "edit", edited=wanted)
    pairs = feedback.pairs(feedback.items(run.run_dir))
    data = feedback.write_dataset(pairs, home / "feedback.jsonl")
    t1 = time.time()
    dpo = Trainer(args.model).train(str(data), method="dpo", from_run=sft.run_id)
    t_dpo = time.time() - t1
    after = answers(args.model, dpo.adapter_path, prompts)
    rows = []
    for (question, wanted), old, new in zip(CORRECTIONS, before, after):
        score = metrics.score(new, wanted)
        rows.append({"question": question, "wanted": wanted, "before": old, "after": new,
                     "exact": " ".join(new.split()) == " ".join(wanted.split()),
                     "gives_fact": bool(score.learned)})
    for r in rows:
        print(f"Q: {r['question']}\n  wanted: {r['wanted']}\n  before: {r['before'][:120]!r}\n"
              f"  after:  {r['after'][:120]!r}  exact={r['exact']} gives_fact={r['gives_fact']}")
    result = {"model": args.model, "pairs": len(pairs), "dpo_steps": dpo.steps, "sft_s": round(t_sft, 1),
              "dpo_s": round(t_dpo, 1), "exact": sum(r["exact"] for r in rows),
              "gives_fact": sum(r["gives_fact"] for r in rows), "of": len(rows), "rows": rows}
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
