"""Does the model learn the user's data, and does the product show it: answer metrics,
a held-out split that measures new wording, early stopping that keeps the best adapter,
the samples event, and `backprop eval` of a run and of its GGUF."""

import json
from pathlib import Path

import pytest

from backpropagate_core.api import Trainer
from backpropagate_core.data.dataset import load, split
from backpropagate_core.eval import metrics
from backpropagate_core.runs.layout import MANIFEST, RunDir
from backpropagate_core.runs.store import RunStore

FAST = dict(precision="fp32", batch_size=4, grad_accum=1, report_to="none", max_seq_len=64)


def chat(q: str, a: str) -> dict:
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def facts(n: int = 10) -> list[dict]:
    """n made-up facts, each asked three ways with the same answer."""
    rows = []
    for i in range(n):
        answer = f"The lighthouse number {i} is painted {['red', 'green', 'blue', 'amber', 'violet'][i % 5]}."
        rows += [chat(f"What colour is lighthouse {i}?", answer),
                 chat(f"Which colour was lighthouse {i} painted?", answer),
                 chat(f"Tell me the paint colour of lighthouse {i}.", answer)]
    return rows


def test_metrics_on_known_strings():
    assert metrics.exact_match("The Cat!", "the cat") == 1.0
    assert metrics.token_f1("the cat sat", "a cat sat down") == pytest.approx(0.8)
    assert metrics.rouge_l("cat sat on mat", "the cat sat on the mat") == pytest.approx(1.0)
    assert metrics.rouge_l("mat on sat cat", "cat sat on mat") == pytest.approx(0.25)
    # The dataset's shape with the wrong name scores low on the fact, high on overlap.
    wrong = metrics.score("The observatory cat is called Tom.", "The observatory cat is called Miso.",
                          "What is the observatory cat called?")
    right = metrics.score("It is named Miso.", "The observatory cat is called Miso.",
                          "What is the observatory cat called?")
    assert wrong.f1 > 0.8 and wrong.fact_recall == 0.0 and not wrong.learned
    assert right.fact_recall == 1.0 and right.learned
    summary = metrics.summarise([wrong, right])
    assert summary["answer_score"] == 0.5


def test_held_out_split_keeps_repeats_together_and_asks_new_wording(tmp_path):
    rows = facts(10) + [chat("What colour is lighthouse 0?", facts(1)[0]["messages"][1]["content"])]
    examples = load(write(tmp_path / "facts.jsonl", rows)).examples
    train, val = split(examples, 0.1, seed=3)
    assert val, "a dataset of 10+ examples always gets a held-out split"
    trained_answers = {ex.messages[-1]["content"] for ex in train}
    trained_pairs = {(ex.messages[0]["content"], ex.messages[-1]["content"]) for ex in train}
    for ex in val:
        assert ex.messages[-1]["content"] in trained_answers  # the fact is learnable ...
        assert (ex.messages[0]["content"], ex.messages[-1]["content"]) not in trained_pairs  # ... in new words
    assert split(examples, 0.1, seed=3) == (train, val)
    unique = load(write(tmp_path / "u.jsonl", [chat(f"q{i}", f"a{i}") for i in range(12)])).examples
    assert len(split(unique, 0.1, seed=0)[1]) == 1


def test_early_stopping_keeps_the_best_adapter(tiny_llama, tmp_path):
    """Held-out answers the model never sees: its held-out loss falls while it learns the
    format, then rises as it memorises; the run stops and keeps the best step."""
    import random

    rng = random.Random(0)
    words = ["zebra", "quartz", "violin", "harbor", "lemon", "comet", "saddle", "tulip"]
    rows = [chat(f"Item {i}?", " ".join(rng.choice(words) for _ in range(6))) for i in range(24)]
    data = write(tmp_path / "random.jsonl", rows)
    events = []
    result = Trainer(str(tiny_llama), sink=events.append, **FAST).train(
        data, steps=80, learning_rate=1e-2, lr_scheduler="constant", eval_steps=2, patience=2,
        save_steps=100, val_fraction=0.2, eval_samples=4)
    run = RunStore().get(result.run_id)
    assert result.status == "completed" and result.steps < 80, "early stopping never ended the run"
    evals = [e for e in events if e.type == "eval"]
    best = [e for e in evals if e.best]
    assert best and run.summary["best_step"] == best[-1].step and run.summary["stopped_early"] is True
    assert min(evals, key=lambda e: (-(e.answer_score or 0), e.loss)).step == best[-1].step
    kept = json.loads((RunDir(run.run_dir).adapter / MANIFEST).read_text())
    assert kept["step"] == best[-1].step < result.steps
    assert (RunDir(run.run_dir).adapter / "adapter_model.safetensors").read_bytes() == \
        (RunDir(run.run_dir).best / "adapter_model.safetensors").read_bytes()
    # What the Train page shows: answers now next to the base model's, for each eval.
    samples = [e for _, e in RunStore().events(run.id, types=("samples",))]
    assert len(samples) == len(evals)
    first = samples[0]["samples"][0]
    assert set(first) >= {"prompt", "reference", "base", "answer", "score"} and first["prompt"].startswith("Item")


@pytest.mark.slow
def test_eval_scores_a_run_and_its_gguf_alike(tmp_path, capsys):
    pytest.importorskip("llama_cpp")
    from backpropagate_core.cli.app import main
    from backpropagate_core.export import export_model
    from tests.export_fixtures import tiny_base

    base = tiny_base(tmp_path, "qwen2")
    data = write(tmp_path / "facts.jsonl", facts(4))
    result = Trainer(str(base), **FAST).train(data, steps=4, learning_rate=5e-3, eval_samples=2)
    export_model(result.run_id, format="gguf", quantization="f16")
    capsys.readouterr()
    assert main(["eval", result.run_id[:8], "--gguf", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["questions"] >= 1 and report["agreement"] == 1.0
    assert set(report["model"]) >= {"answer_score", "f1", "rouge_l", "exact_match"}
    assert report["rows"][0]["gguf"] == report["rows"][0]["answer"]
    questions = write(tmp_path / "q.jsonl", facts(2))
    assert main(["eval", result.run_id[:8], "--data", str(questions)]) == 0
    assert "trained model gives the fact in" in capsys.readouterr().out
