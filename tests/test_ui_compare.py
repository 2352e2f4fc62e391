"""Comparing two runs: only the settings that differ, both curves by step, the held-out
scores, and the same questions answered by each."""

from backpropagate_app.pages.runs.compare import comparison
from backpropagate_core.runs import events as ev
from backpropagate_core.runs.store import RunStore


def record_run(store, name: str, lr: float, losses: list[float], answer: str, learned: bool, best: float):
    config = {"model": "m", "data": "/d/facts.jsonl", "name": name, "training": {"learning_rate": lr, "steps": 3}}
    run = store.create_run(config=config, model="m", dataset="/d/facts.jsonl", name=name)
    store.record(ev.RunStarted(run.id, config=config, total_steps=len(losses)))
    for i, loss in enumerate(losses, 1):
        store.record(ev.Step(run.id, step=i, total=len(losses), loss=loss, lr=lr))
    store.record(ev.Eval(run.id, step=len(losses), loss=losses[-1] + 0.5, answer_score=best))
    store.record(ev.Samples(run.id, step=len(losses), samples=[
        {"prompt": "Who founded the garden?", "reference": "Ingrid Valcourt founded it.", "base": "A king.",
         "answer": answer, "learned": learned}], answer_score=best, base_score=0.0))
    store.record(ev.Finished(run.id, final_loss=losses[-1], steps=len(losses), best_step=len(losses),
                             best_score=best, base_score=0.0))
    return run


def test_comparison_shows_what_differs_and_both_answers():
    store = RunStore()
    a = record_run(store, "slow", 2e-4, [2.0, 1.9, 1.8], "A king founded it.", False, 0.0)
    b = record_run(store, "fast", 1e-3, [2.0, 1.2, 0.4], "Ingrid Valcourt founded it.", True, 1.0)
    shown = comparison(store, a.id[:8], b.id[:8])
    assert [row["key"] for row in shown["diff"]] == ["training.learning_rate"]
    assert shown["a"]["score"] == "0%" and shown["b"]["score"] == "100%" and shown["b"]["base"] == "0%"
    assert shown["points"][1] == {"step": 2, "a_loss": 1.9, "b_loss": 1.2}
    assert shown["points"][2]["b_eval_loss"] == 0.9
    (row,) = shown["answers"]
    assert row["a"] == "A king founded it." and row["b"] == "Ingrid Valcourt founded it."
    assert row["b_learned"] and not row["a_learned"]


def test_answers_of_a_run_without_samples_still_show():
    store = RunStore()
    stopped = store.create_run(config={"model": "m"}, model="m", dataset="d")
    b = record_run(store, "fast", 1e-3, [2.0, 1.2, 0.4], "Ingrid Valcourt founded it.", True, 1.0)
    (row,) = comparison(store, stopped.id, b.id)["answers"]
    assert row["a"] == "(not asked)" and row["b"] == "Ingrid Valcourt founded it."
