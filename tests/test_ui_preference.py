"""Preference training as the pages show it (backpropagate_app.preference), without a
browser: the method of a run, its live reward figures, its Runs-table headline, and a
preference dataset's pairs as the engine's own report counts them."""

from __future__ import annotations

import json

import pytest

from backpropagate_app import display as d
from backpropagate_app import preference as p
from backpropagate_app.pages.runs.page import SparkCache, read_rows
from backpropagate_core.data.report import report
from backpropagate_core.runs import events as ev
from backpropagate_core.runs.store import RunStore
from backpropagate_core.training.campaign_state import KIND


def pair_step(n: int, acc: float, margin: float, total: int = 6) -> ev.Step:
    return ev.Step("", step=n, total=total, loss=0.69 - 0.01 * n, lr=1e-5, tokens_per_s=400.0,
                   reward_accuracy=acc, reward_margin=margin, chosen_logp=-78.4 + n, rejected_logp=-216.1 - n)


def record_dpo(store: RunStore, name: str, method: str = "dpo", finish: bool = True) -> str:
    """A preference run as the worker records it: the config as the Train page sends it
    ("auto" unless a method was picked), steps with reward figures, evaluations, Finished."""
    run = store.create_run(config={"model": "m", "data": "/p.jsonl", "training": {"method": method}},
                           model="m", dataset="/data/pairs.jsonl", name=name)
    store.record(ev.RunStarted(run.id, config={"model": "m", "training": {"method": "dpo", "beta": 0.1}},
                               reasons={"method": "the dataset holds chosen/rejected answer pairs"}, total_steps=6))
    for n in range(1, 7):
        step = pair_step(n, acc=0.5 if n < 3 else 1.0, margin=0.01 * n)
        step.run_id = run.id
        store.record(step)
        if n % 3 == 0:
            store.record(ev.Eval(run.id, step=n, loss=0.68, reward_accuracy=0.5 + n / 12, reward_margin=0.02))
    if finish:
        store.record(ev.Finished(run.id, final_loss=0.63, steps=6, method="dpo", reward_accuracy=0.75,
                                 best_step=3))
    return run.id


# ---- which method ---------------------------------------------------------------------------------

def test_method_of_a_run_prefers_what_the_engine_resolved():
    queued_auto = {"config": {"training": {"method": "auto"}}}
    assert p.method_of(queued_auto) == ""  # not resolved until the run starts
    assert p.method_of(queued_auto, {"config": {"training": {"method": "dpo"}}}) == "dpo"
    assert p.method_of({"config": {"training": {"method": "orpo"}}}) == "orpo"
    assert p.method_of(queued_auto, None, {"method": "orpo"}) == "orpo"
    assert p.method_of({"config": {"training": {"steps": 3}}}) == "sft"  # recorded before methods existed
    assert p.method_of({"kind": KIND, "config": {}}) == "sft"  # campaigns refuse pairs


# ---- the live run panel ---------------------------------------------------------------------------

def test_run_tail_shows_reward_figures_of_a_preference_run(isolated_home):
    store = RunStore(isolated_home)
    run_id = record_dpo(store, "dpo-live", finish=False)
    tail = d.RunTail(run_id)
    tail.feed(store.events(run_id))
    view = tail.view(store.get(run_id).to_dict())
    assert view["method"] == "DPO" and view["preference"]
    assert view["reward_accuracy"] == "100%" and view["reward_margin"] == "+0.060"
    assert view["chosen_logp"] == "-72.4" and view["rejected_logp"] == "-222.1"
    # Held-out: the newest evaluation's (step 6: 0.5 + 6/12) until the run keeps one.
    assert view["eval_reward_accuracy"] == "100%" and view["eval_reward_step"] == "6"
    third = view["points"][2]
    assert third["reward_accuracy"] == 100.0 and third["eval_reward_accuracy"] == 75.0
    assert third["eval_reward_margin"] == 0.02 and third["chosen_logp"] == -75.4 and "eval_loss" in third
    assert "reward accuracy 100%" in view["log"][0]["text"]

    store.record(ev.Finished(run_id, final_loss=0.63, steps=6, method="dpo", reward_accuracy=0.75, best_step=3))
    tail.feed(store.events(run_id, after_id=tail.after_id))
    done = tail.view(store.get(run_id).to_dict())
    assert done["eval_reward_accuracy"] == "75%" and done["eval_reward_step"] == "3"  # the kept adapter's


def test_sft_runs_show_no_reward_figures():
    tail = d.RunTail("r1")
    tail.feed([(1, {"type": "run_started", "config": {"training": {"method": "sft"}}, "total_steps": 2}),
               (2, {"type": "step", "step": 1, "total": 2, "loss": 2.0})])
    view = tail.view({"id": "r1", "status": "running"})
    assert view["method"] == "SFT" and not view["preference"]
    assert view["reward_accuracy"] == "—" and view["eval_reward_accuracy"] == "—"
    assert view["points"] == [{"step": 1, "loss": 2.0}]
    assert d.EMPTY_RUN_VIEW["method"] == "" and d.EMPTY_RUN_VIEW["preference"] is False


# ---- the Runs table --------------------------------------------------------------------------------

def test_runs_table_shows_method_and_held_out_reward_accuracy(isolated_home):
    store = RunStore(isolated_home)
    record_dpo(store, "dpo-run", method="auto")
    sft = store.create_run(config={"model": "m", "training": {"method": "sft"}}, model="m",
                           dataset="/d.jsonl", name="sft-run")
    store.record(ev.Finished(sft.id, final_loss=1.0, steps=1, best_score=0.4, base_score=0.1, best_step=1))
    rows = {r["name"]: r for r in read_rows("all", SparkCache())}
    assert rows["dpo-run"]["method"] == "DPO" and rows["dpo-run"]["learned"] == "75% of pairs"
    assert "reward accuracy" in rows["dpo-run"]["learned_note"]
    assert len(rows["dpo-run"]["spark"]) == 6
    assert rows["sft-run"]["method"] == "SFT" and rows["sft-run"]["learned"] == "40% (base 10%)"


def test_runs_table_follows_a_preference_run_to_its_end(isolated_home):
    """The last evaluation and Finished come after the last step; the row still gets them."""
    store = RunStore(isolated_home)
    run_id = record_dpo(store, "dpo", finish=False)
    sparks = SparkCache()
    assert read_rows("all", sparks)[0]["learned"] == "100% of pairs"  # newest evaluation
    store.record(ev.Finished(run_id, final_loss=0.63, steps=6, method="dpo", reward_accuracy=0.75))
    assert read_rows("all", sparks)[0]["learned"] == "75% of pairs"  # the kept adapter's
    queued = store.create_run(config={"training": {"method": "auto"}}, model="m", dataset="/p.jsonl", name="q")
    row = {r["name"]: r for r in read_rows("all", sparks)}["q"]
    assert row["method"] == "auto" and row["learned"] == "—"
    assert queued.status == "queued"


# ---- the Dataset page ------------------------------------------------------------------------------

@pytest.fixture
def pairs_file(tmp_path):
    rows = [{"prompt": f"What is item {i}?", "chosen": f"Item {i} is short.",
             "rejected": f"Well, item {i} is, I think, maybe, a long thing."} for i in range(6)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_pair_view_of_the_engines_own_report(pairs_file):
    pairs = report(pairs_file).pairs  # no tokenizer: lengths in words
    view = p.pair_view(pairs)
    assert view["pairs"] == 6
    assert view["chosen_length"] == "mean 4 · p50 4 · max 4 words"
    assert view["rejected_length"] == "mean 10 · p50 10 · max 10 words"
    assert view["chosen_longer"] == "0%" and "longer one in only 0%" in view["length_note"]
    assert p.pair_view(None)["pairs"] == 0
    balanced = p.pair_view({"count": 10, "unit": "tokens", "chosen": {"mean": 5.5, "p50": 5, "max": 9},
                            "rejected": {"mean": 6, "p50": 6, "max": 8}, "chosen_longer": 0.5})
    assert balanced["length_note"] == "" and balanced["chosen_length"] == "mean 5.5 · p50 5 · max 9 tokens"


def test_report_view_keeps_chosen_and_rejected_roles(pairs_file):
    from backpropagate_core.runs.protocol import DatasetReport

    view = d.report_view(DatasetReport.model_validate(report(pairs_file).to_dict()))
    assert view["summary"].format == "preference"
    assert [m["role"] for m in view["preview"][0]] == ["user", "chosen", "rejected"]
    assert view["preview"][0][1]["content"] == "Item 0 is short."
    assert view["summary"].pairs == 6
