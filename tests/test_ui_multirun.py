"""The Multi-Run page without a browser: the form's checks, the run timeline, the heat-map's
colours, the loss curve's merge points, the live tail of a campaign and the comparison of
two campaigns, all from what the run store holds."""

from __future__ import annotations

import re

import pytest

from backpropagate_app.pages.multirun import view
from backpropagate_core.runs import events as ev
from backpropagate_core.errors import BackpropError
from backpropagate_core.runs.events import CampaignRunStarted, ForgettingMeasured, MergeDone
from backpropagate_core.training.campaign_state import KIND
from backpropagate_core.runs.store import RunStore

MATRIX = [[1.0, None, None], [1.2, 0.8, None], [1.3, 0.9, 0.6]]


def hue(color: str) -> int:
    return int(re.match(r"hsl\((\d+),", color).group(1))


def lightness(color: str) -> int:
    return int(re.search(r"(\d+)%\)$", color).group(1))


def record_campaign(store: RunStore, name: str, mode: str = "slao", runs: int = 3, steps: int = 2,
                    losses: list[float] | None = None, finish: bool = True, dataset: str = "/data/tasks.jsonl") -> str:
    """A campaign as the worker records it: events, and the summary it republishes."""
    settings = {"num_runs": runs, "steps_per_run": steps, "merge_mode": mode}
    run = store.create_run(config={"model": "m", "data": dataset, "campaign": settings}, model="m",
                           dataset=dataset, name=name, kind=KIND)
    store.record(ev.RunStarted(run.id, config={}, total_steps=runs * steps))
    matrix, lambdas, merges = [], [], []
    losses = losses or [2.0 - 0.1 * k for k in range(runs * steps)]
    for i in range(1, runs + 1):
        store.record(CampaignRunStarted(run.id, run_index=i, num_runs=runs, first_step=(i - 1) * steps,
                                        train_examples=8))
        for s in range((i - 1) * steps + 1, i * steps + 1):
            store.record(ev.Step(run.id, step=s, total=runs * steps, loss=losses[s - 1], lr=1e-4))
        lam = None if mode == "sequential" else 1 / i ** 0.5
        store.record(MergeDone(run.id, run_index=i, step=i * steps, mode=mode, lam=lam))
        matrix.append([1.0 + 0.1 * (i - j) if j < i else None for j in range(runs)])
        lambdas.append(lam)
        merges.append(i * steps)
        store.record(ForgettingMeasured(run.id, run_index=i, losses=matrix[-1][:i]))
        store.merge_summary(run.id, timeline=["done"] * i + ["pending"] * (runs - i), forgetting=matrix,
                            avg_forgetting=0.1 if i > 1 else None, lambdas=lambdas, merge_steps=merges,
                            merge_mode=mode, num_runs=runs, steps_per_run=steps)
    if finish:
        store.record(ev.Finished(run.id, final_loss=losses[-1], steps=runs * steps))
    return run.id


# ---- the form ------------------------------------------------------------------------------------

def test_form_defaults_are_the_engines():
    form = view.default_form()
    # Samples per run is left to the engine, which shares the dataset out between the runs:
    # Start with the defaults works on the 35-example quickstart file.
    assert form == {"num_runs": "5", "steps_per_run": "100", "samples_per_run": "",
                    "replay_fraction": "0", "merge_mode": "slao", "schedule": "inv_sqrt"}
    assert all(view.CAPTIONS[key] for key in form)


def test_form_becomes_typed_options():
    form = view.default_form() | {"num_runs": "3", "steps_per_run": "6.0", "replay_fraction": "0.1",
                                  "merge_mode": "sequential"}
    assert view.campaign_options(form) == {"num_runs": 3, "steps_per_run": 6,
                                           "replay_fraction": 0.1, "merge_mode": "sequential",
                                           "schedule": "inv_sqrt"}
    assert view.campaign_options(form | {"samples_per_run": "40"})["samples_per_run"] == 40


def test_form_reports_every_bad_field_at_once():
    with pytest.raises(BackpropError) as err:
        view.campaign_options(view.default_form() | {"num_runs": "two", "steps_per_run": "1.5"})
    assert err.value.code == "CONFIG_INVALID"
    assert "Runs: 'two'" in err.value.message and "Steps per run: '1.5'" in err.value.message


def test_form_applies_the_engines_own_checks():
    with pytest.raises(BackpropError) as err:
        view.campaign_options(view.default_form() | {"samples_per_run": "1"})
    assert err.value.code == "CONFIG_INVALID"
    with pytest.raises(BackpropError):
        view.campaign_options(view.default_form() | {"replay_fraction": "1.5"})


# ---- timeline -------------------------------------------------------------------------------------

def test_timeline_rows_from_the_summary():
    run = {"status": "running", "config": {"campaign": {"num_runs": 3, "steps_per_run": 6}},
           "summary": {"timeline": ["done", "merging", "pending"], "lambdas": [1.0],
                       "forgetting": [[1.25, None, None]], "num_runs": 3, "steps_per_run": 6}}
    rows = view.timeline_rows(run)
    assert [r["state"] for r in rows] == ["done", "merging", "pending"]
    assert [r["color"] for r in rows] == ["green", "violet", "gray"]
    assert rows[0] == {"index": "1", "state": "done", "color": "green", "steps": "steps 1–6",
                       "lam": "λ 1.000", "loss": "val 1.2500"}
    assert rows[2]["steps"] == "steps 13–18" and rows[2]["lam"] == rows[2]["loss"] == ""


def test_timeline_before_the_worker_published_is_all_pending():
    run = {"status": "queued", "config": {"campaign": {"num_runs": 2, "steps_per_run": 5}}, "summary": {}}
    assert [r["state"] for r in view.timeline_rows(run)] == ["pending", "pending"]


def test_a_run_under_way_when_the_campaign_ended_shows_as_stopped():
    run = {"status": "interrupted", "config": {}, "summary": {"timeline": ["done", "training"], "num_runs": 2}}
    assert [r["state"] for r in view.timeline_rows(run)] == ["done", "stopped"]


# ---- heat-map -------------------------------------------------------------------------------------

def test_heat_colour_runs_from_green_at_the_lowest_to_red_at_the_highest():
    assert hue(view.heat_color(0.6, 0.6, 1.3)) == 130
    assert hue(view.heat_color(1.3, 0.6, 1.3)) == 0
    middle = hue(view.heat_color(0.95, 0.6, 1.3))
    assert 0 < middle < 130
    assert hue(view.heat_color(0.7, 0.6, 1.3)) > hue(view.heat_color(0.8, 0.6, 1.3))  # monotone
    assert view.heat_color(5.0, 0.6, 1.3) == view.heat_color(1.3, 0.6, 1.3)  # clamped
    assert hue(view.heat_color(1.0, 1.0, 1.0)) == 65  # one value: neutral
    assert view.heat_color(None, 0.6, 1.3) != view.heat_color(0.6, 0.6, 1.3)


def test_delta_colour_is_red_for_a_rise_green_for_a_fall_stronger_further_from_zero():
    assert hue(view.delta_color(0.3, 0.3)) == 0 and hue(view.delta_color(-0.1, 0.3)) == 130
    assert lightness(view.delta_color(0.3, 0.3)) < lightness(view.delta_color(0.1, 0.3))
    assert view.delta_color(None, 0.3) == "transparent"


def test_heatmap_cells_form_a_run_by_chunk_grid_with_a_forgetting_row():
    cells = view.heatmap_cells(MATRIX)
    # header + 3 runs + the forgetting row, each 1 label + 3 chunks
    assert len(cells) == 5 * 4
    assert [c["text"] for c in cells[:4]] == ["", "chunk 1", "chunk 2", "chunk 3"]
    assert [c["text"] for c in cells[4:8]] == ["after run 1", "1.0000", "—", "—"]
    losses = [c for c in cells if c["kind"] == "loss"]
    seen = ["1.0000", "1.2000", "0.8000", "1.3000", "0.9000", "0.6000"]
    assert [c["text"] for c in losses if c["text"] != "—"] == seen
    by_text = {c["text"]: c["background"] for c in losses}
    assert hue(by_text["0.6000"]) == 130 and hue(by_text["1.3000"]) == 0
    # forgot: chunk 1 rose 0.3, chunk 2 rose 0.1, the last chunk has nothing to compare with
    assert [c["text"] for c in cells[-4:]] == ["forgot", "+0.3000", "+0.1000", "—"]
    assert all(c["kind"] in ("corner", "head", "loss", "delta") for c in cells)


def test_heatmap_of_one_run_has_no_forgetting_row():
    assert [c["text"] for c in view.heatmap_cells([[1.5, None]])] == ["", "chunk 1", "chunk 2", "after run 1",
                                                                     "1.5000", "—"]
    assert view.heatmap_cells([]) == []


def test_forgetting_figure_says_what_it_means():
    assert view.forgetting_figure(0.0696)[0] == "+0.0696"
    assert "rose by 0.0696" in view.forgetting_figure(0.0696)[1]
    assert "fell" in view.forgetting_figure(-0.01)[1]
    assert view.forgetting_figure(None)[0] == "—"


# ---- loss curve -----------------------------------------------------------------------------------

def test_merge_markers_and_chart_points():
    markers = view.merge_markers({"merge_steps": [3, 6], "lambdas": [1.0, 0.7071], "merge_mode": "slao"})
    assert markers == [{"step": 3, "label": "merge 1 · λ 1.00"}, {"step": 6, "label": "merge 2 · λ 0.71"}]
    points = [{"step": s, "loss": 2.0 - s / 10} for s in range(1, 7)]
    charted = view.chart_points(points, markers)
    assert [p["step"] for p in charted if "merge" in p] == [3, 6]
    assert charted[2]["merge"] == charted[2]["loss"] == 1.7
    assert "merge" not in points[2]  # the tail's points are not changed in place


def test_sequential_markers_mark_run_ends():
    markers = view.merge_markers({"merge_steps": [4], "lambdas": [None], "merge_mode": "sequential"})
    assert markers == [{"step": 4, "label": "run 1 ends"}]


# ---- following a campaign in the store -------------------------------------------------------------

def test_campaign_tail_view_of_a_recorded_campaign(isolated_home):
    store = RunStore(isolated_home)
    run_id = record_campaign(store, "c1")
    tail = view.CampaignTail(run_id)
    assert tail.feed(store.events(run_id))
    shown = tail.view(store.get(run_id).to_dict())
    assert shown["status"] == "completed" and shown["merge_mode"] == "slao"
    assert [r["state"] for r in shown["timeline"]] == ["done"] * 3
    assert [p["step"] for p in shown["points"]] == list(range(1, 7))
    assert [p["step"] for p in shown["points"] if "merge" in p] == [2, 4, 6]
    assert [m["step"] for m in shown["markers"]] == [2, 4, 6]
    assert shown["heat_columns"] == "4" and len(shown["heat"]) == 20
    assert shown["avg_forgetting"] == "+0.1000" and shown["runs_done"] == "3 of 3 runs done"
    kinds = [line["kind"] for line in shown["log"]]
    assert {"campaign_run_started", "merge", "forgetting", "finished"} <= set(kinds)
    texts = " | ".join(line["text"] for line in shown["log"])
    assert "run 2/3 started · 8 examples" in texts and "merged after run 2 · λ 0.707" in texts
    assert set(view.EMPTY_CAMPAIGN_VIEW) == set(shown)  # every var the page shows has an empty value


def test_page_shows_the_active_campaign_unless_one_was_picked(isolated_home):
    from backpropagate_app.pages.multirun.state import campaign_to_show

    store = RunStore(isolated_home)
    assert campaign_to_show("", False) == ""
    old = record_campaign(store, "old")
    assert campaign_to_show("", False) == old
    live = record_campaign(store, "live", finish=False)
    assert campaign_to_show(old, False) == live  # started elsewhere: follow it
    assert campaign_to_show(old[:8], True) == old  # picked (or in the URL) stays shown
    store.update(live, status="completed")
    assert campaign_to_show(old, False) == old
    store.delete(old)
    assert campaign_to_show(old, False) == live  # the one shown was deleted: the newest


# ---- comparing two campaigns ------------------------------------------------------------------------

def test_default_pair_prefers_the_other_mode_on_the_same_data():
    found = [{"value": "c", "mode": "slao", "dataset": "/d1"}, {"value": "b", "mode": "slao", "dataset": "/d1"},
             {"value": "a", "mode": "sequential", "dataset": "/d1"}]
    assert view.default_pair(found) == ("c", "a")
    assert view.default_pair(found[:2]) == ("c", "b")
    assert view.default_pair(found[:1]) == ("c", "")
    assert view.default_pair([]) == ("", "")


def test_comparison_of_two_recorded_campaigns(isolated_home):
    from backpropagate_app.pages.multirun.state import list_campaigns, read_comparison

    store = RunStore(isolated_home)
    slao = record_campaign(store, "s", "slao")
    seq = record_campaign(store, "q", "sequential", losses=[2.5 - 0.1 * k for k in range(6)])
    store.merge_summary(seq, forgetting=[[1.0, None, None], [1.3, 0.8, None], [1.4, 1.0, 0.6]],
                        avg_forgetting=0.3)
    options = list_campaigns()
    assert [o["label"].split(" · ")[:3] for o in options] == [["q", "sequential", "completed"],
                                                              ["s", "slao", "completed"]]
    assert view.default_pair(options) == (seq, slao)

    out = read_comparison(slao, seq)
    assert out["a"] == {"name": "s", "mode": "slao", "avg": "+0.1000"}
    assert out["b"] == {"name": "q", "mode": "sequential", "avg": "+0.3000"}
    assert out["rows"] == [{"chunk": "chunk 1", "a": "1.3000", "b": "1.4000", "better": "a"},
                           {"chunk": "chunk 2", "a": "1.2000", "b": "1.0000", "better": "b"},
                           {"chunk": "chunk 3", "a": "1.1000", "b": "0.6000", "better": "b"}]
    assert out["points"][0] == {"step": 1, "a": 2.0, "b": 2.5}
    assert [p["step"] for p in out["points"]] == list(range(1, 7))


def test_a_preference_dataset_is_refused_before_a_campaign_exists(isolated_home, tmp_path, monkeypatch,
                                                                   tiny_llama):
    """Campaigns train SFT only: starting one on answer pairs shows the engine's coded error,
    and nothing is queued."""
    import json

    from backpropagate_app import facade
    from backpropagate_app.pages.multirun.state import launch

    monkeypatch.setenv("BACKPROPAGATE_UI__OUTPUT_DIR", str(tmp_path / "outputs"))
    pairs = facade.uploads_dir() / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"Item {i}?", "chosen": "Short.", "rejected": "Long, long."}) + "\n"
                             for i in range(12)))
    with pytest.raises(BackpropError) as err:
        launch(facade.CUSTOM_MODEL, str(tiny_llama), str(pairs), "", view.default_form(), False)
    assert err.value.code == "CONFIG_INVALID" and "SFT only" in err.value.message and err.value.hint
    assert RunStore(isolated_home).list() == []
