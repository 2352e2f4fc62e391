"""What the pages show, computed from engine data without a browser (backpropagate_app.display)."""

from __future__ import annotations

import pytest

from backpropagate_app import display as d
from backpropagate_core.runs import events as ev
from backpropagate_core.errors import BackpropError
from backpropagate_core.runs.protocol import DatasetReport
from backpropagate_core.runs.store import RunStore


def step(n: int, total: int = 10, loss: float = 2.0, **extra) -> dict:
    return {"type": "step", "step": n, "total": total, "loss": loss, "lr": 1e-4,
            "tokens_per_s": 500.0, "eta_s": 30.0, "ts": 1_700_000_000.0 + n, **extra}


def rows(*events: dict, start: int = 1) -> list[tuple[int, dict]]:
    return [(start + i, e) for i, e in enumerate(events)]


# ---- formatting -------------------------------------------------------------------------------

@pytest.mark.parametrize("seconds, text", [(None, "—"), (-1, "—"), (0, "0s"), (59.4, "59s"),
                                           (61, "1m 01s"), (3600, "1h 00m"), (3725, "1h 02m")])
def test_fmt_duration(seconds, text):
    assert d.fmt_duration(seconds) == text


def test_number_formats():
    assert d.fmt_loss(1.234567) == "1.2346" and d.fmt_loss(None) == "—"
    assert d.fmt_lr(0.0002) == "2.00e-04"
    assert d.fmt_rate(1234.4) == "1,234 tok/s"


def test_short_name_keeps_hub_ids_and_shortens_paths(tmp_path):
    folder = tmp_path / "my-model"
    folder.mkdir()
    assert d.short_name("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"
    assert d.short_name("smollm2-135m") == "smollm2-135m"
    assert d.short_name(str(folder)) == "my-model"
    assert d.short_name("/data/chat.jsonl") == "chat.jsonl"
    assert d.short_name(None) == "—"


# ---- charts -----------------------------------------------------------------------------------

def test_loss_points_merge_eval_into_the_step():
    events = [step(1, loss=3.0), step(2, loss=2.5), {"type": "eval", "step": 2, "loss": 2.7},
              {"type": "hardware", "cpu_pct": 50}, step(3, loss=2.0)]
    assert d.loss_points(events) == [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.5, "eval_loss": 2.7},
                                     {"step": 3, "loss": 2.0}]


def test_thin_keeps_first_and_last_and_caps_length():
    points = [{"step": i} for i in range(1, 1001)]
    thinned = d.thin(points, 100)
    assert len(thinned) == 100
    assert thinned[0]["step"] == 1 and thinned[-1]["step"] == 1000
    assert [p["step"] for p in thinned] == sorted(p["step"] for p in thinned)
    assert d.thin(points[:5], 100) == points[:5]


def test_sparkline_skips_missing_losses():
    spark = d.sparkline([3.0, None, 2.0, 1.0], width=30)
    assert spark == [{"i": 0, "loss": 3.0}, {"i": 1, "loss": 2.0}, {"i": 2, "loss": 1.0}]
    assert len(d.sparkline([float(i) for i in range(500)], width=30)) == 30


def test_histogram_bars_label_whole_token_ranges():
    bars = d.histogram_bars([{"bin_start": 28, "bin_end": 29, "count": 6},
                             {"bin_start": 30, "bin_end": 40, "count": 2}])
    assert bars == [{"range": "28", "count": 6}, {"range": "30–39", "count": 2}]


# ---- hardware ---------------------------------------------------------------------------------

def test_hardware_view_gpu():
    view = d.hardware_view({"device": "cuda:0", "gpu_name": "RTX 4090", "gpu_temp_c": 64.6,
                            "gpu_util_pct": 93, "vram_used_mb": 10240, "vram_total_mb": 24576,
                            "power_w": 250.2})
    labels = {r["label"]: r for r in view}
    assert labels["GPU"]["value"] == "RTX 4090"
    assert labels["Temperature"]["value"] == "65 °C"
    assert labels["Utilisation"]["pct"] == 93
    assert labels["VRAM"]["value"] == "10.0 / 24.0 GB" and labels["VRAM"]["pct"] == pytest.approx(41.7)
    assert labels["Power"]["pct"] == -1


def test_hardware_view_cpu_only():
    view = d.hardware_view({"device": "cpu", "cpu_pct": 43.2, "ram_used_mb": 5120, "ram_total_mb": 24000})
    assert [r["label"] for r in view] == ["CPU", "RAM"]
    assert view[0]["value"] == "43%" and view[1]["value"] == "5.0 / 23.4 GB"
    assert d.hardware_view(None) == []


# ---- event log and the followed run ------------------------------------------------------------

def test_log_samples_steps_and_keeps_other_events():
    total = 100
    kept = [n for n in range(1, total + 1) if d.log_line(step(n, total=total)) is not None]
    assert kept[0] == 1 and kept[-1] == total and len(kept) == 21  # every 5th: total // 20
    assert d.log_line({"type": "hardware", "cpu_pct": 3}) is None
    failed = d.log_line({"type": "failed", "code": "RUNTIME_LOSS_NONFINITE", "message": "nan", "ts": 0})
    assert failed["kind"] == "failed" and "[RUNTIME_LOSS_NONFINITE]" in failed["text"]


def test_run_tail_folds_events_into_the_live_view():
    tail = d.RunTail("r1")
    assert tail.feed(rows({"type": "run_started", "config": {"training": {"steps": 10}},
                           "reasons": {"steps": "why"}, "total_steps": 10, "ts": 0},
                          step(1, loss=3.0), {"type": "hardware", "cpu_pct": 80.0}, step(2, loss=2.0)))
    assert tail.after_id == 4 and not tail.feed([])
    view = tail.view({"id": "r1", "name": "demo", "status": "running", "step": 2, "total_steps": 10,
                      "last_loss": 2.0, "duration_s": 65, "artifacts": {}})
    assert view["points"] == [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.0}]
    assert view["progress"] == 20.0 and view["loss"] == "2.0000" and view["eta"] == "30s"
    assert view["tokens_per_s"] == "500 tok/s" and view["lr"] == "1.00e-04"
    assert view["hardware"][0]["label"] == "CPU" and view["active"] and not view["resumable"]
    assert view["log"][0]["text"].startswith("step 2/10")  # newest first
    assert view["elapsed"] == "1m 05s"


def test_run_tail_view_is_not_changed_by_later_events():
    """An eval fills in an existing point later; the earlier view must keep its copy, or
    comparing the two would find no change and the chart would never get the eval."""
    tail = d.RunTail("r1")
    tail.feed(rows(step(10, total=10)))
    run = {"id": "r1", "status": "running", "step": 10, "total_steps": 10}
    before = tail.view(run)
    tail.feed(rows({"type": "eval", "step": 10, "loss": 1.5}, start=2))
    after = tail.view(run)
    assert before["points"] != after["points"]
    assert after["points"][-1] == {"step": 10, "loss": 2.0, "eval_loss": 1.5}


def test_score_points_change_only_at_evaluations():
    """The score chart has points of its own, so a step that adds a loss point leaves it
    (and the answers panel) unchanged in the browser."""
    tail = d.RunTail("r1")
    run = {"id": "r1", "status": "running", "step": 3, "total_steps": 10}
    tail.feed(rows(step(1), step(2), {"type": "eval", "step": 2, "loss": 1.5, "answer_score": 0.25}))
    before = tail.view(run)
    tail.feed(rows(step(3), start=4))
    after = tail.view(run)
    assert before["score_points"] == after["score_points"] == [{"step": 2, "answer_score": 25.0}]
    assert len(after["points"]) == 3


def test_run_tail_drops_replayed_steps_on_resume():
    tail = d.RunTail("r1")
    tail.feed(rows(step(1), step(2), step(3)))
    tail.feed(rows({"type": "run_started", "config": {}, "total_steps": 10, "resumed_from_step": 2},
                   start=4))
    assert [p["step"] for p in tail.view({"id": "r1", "status": "running"})["points"]] == [1, 2]


def test_run_views_for_each_outcome():
    tail = d.RunTail("r1")
    done = tail.view({"id": "r1", "status": "completed", "final_loss": 1.25,
                      "artifacts": {"adapter": "/runs/r1/adapter"}})
    assert done["final_loss"] == "1.2500" and done["artifacts"] == [{"name": "adapter", "path": "/runs/r1/adapter"}]
    assert done["error"] == {} and not done["active"] and done["eta"] == "—"
    failed = tail.view({"id": "r1", "status": "failed", "error_code": "RUNTIME_LOSS_NONFINITE",
                        "error_message": "loss is nan", "error_hint": "Lower the learning rate"})
    assert failed["error"] == {"code": "RUNTIME_LOSS_NONFINITE", "message": "loss is nan",
                               "hint": "Lower the learning rate"}
    assert failed["resumable"]
    assert tail.view({"id": "r1", "status": "interrupted", "error_code": "RUNTIME_WORKER_DIED"})["resumable"]


def test_run_tail_with_a_real_store(tmp_path):
    """Events the engine records are read back in order and resumed from `after_id`."""
    store = RunStore(tmp_path)
    run = store.create_run(config={"model": "m"}, model="m", dataset="d.jsonl", name="real")
    store.record(ev.RunStarted(run.id, config={"model": "m"}, total_steps=3))
    tail = d.RunTail(run.id)
    tail.feed(store.events(run.id, after_id=tail.after_id))
    for n in (1, 2, 3):
        store.record(ev.Step(run.id, step=n, total=3, loss=3.0 - n, lr=1e-4, tokens_per_s=100.0))
    store.record(ev.Finished(run.id, final_loss=0.0, steps=3, artifacts={"adapter": str(tmp_path / "a")}))
    assert tail.feed(store.events(run.id, after_id=tail.after_id))
    view = tail.view(store.get(run.id).to_dict())
    assert view["status"] == "completed" and view["step"] == 3 and len(view["points"]) == 3
    assert view["artifacts"][0]["name"] == "adapter" and view["final_loss"] == "0.0000"


# ---- tables -----------------------------------------------------------------------------------

def test_run_row():
    row = d.run_row({"id": "abcdef1234", "name": None, "status": "completed", "model": "smollm2-135m",
                     "dataset": "/data/chat.jsonl", "started_at": 0.0, "duration_s": 90,
                     "final_loss": 1.5, "last_loss": 1.6, "step": 10, "total_steps": 10}, [])
    assert row["name"] == "abcdef12" and row["dataset"] == "chat.jsonl" and row["loss"] == "1.5000"
    assert row["duration"] == "1m 30s" and row["progress"] == "10/10"


def test_config_rows_flatten_sections_and_attach_reasons():
    rows_ = d.config_rows({"model": "m", "lora": {"r": 16, "target_modules": None},
                           "training": {"learning_rate": 0.0002, "steps": 27}},
                          {"learning_rate": "standard LoRA rate", "steps": "~3 epochs"})
    by_key = {r["key"]: r for r in rows_}
    assert by_key["lora.target_modules"]["value"] == "auto"
    assert by_key["training.learning_rate"] == {"key": "training.learning_rate", "value": "0.0002",
                                                "reason": "standard LoRA rate"}
    assert by_key["model"]["reason"] == ""


def test_event_rows_include_steps_and_hardware():
    out = d.event_rows(rows(step(3, total=1000), {"type": "hardware", "cpu_pct": 10.0, "ts": 0}))
    assert [r["kind"] for r in out] == ["step", "hardware"]
    assert out[1]["text"] == "CPU 10%"


# ---- dataset report ---------------------------------------------------------------------------

def test_report_view():
    view = d.report_view(DatasetReport.model_validate({
        "path": "/d.jsonl", "format": "openai", "examples": 12, "duplicates": 1, "empty": 0, "over_long": 2,
        "token_percentiles": {"p50": 28, "p90": 31, "p95": 33, "p99": 33, "max": 33},
        "histogram": [{"bin_start": 28, "bin_end": 29, "count": 6}], "total_tokens": 3470,
        "problems": [{"line": 5, "code": "INPUT_DATASET_INVALID", "message": "line 5: invalid JSON"},
                     {"line": None, "code": "X", "message": "file-wide"}],
        "preview": [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]],
    }))
    summary = view["summary"]
    assert summary.examples == 12 and summary.over_long == 2 and summary.tokens == "p50 28 · p95 33 · max 33"
    assert summary.total_tokens == "3,470" and view["problem_count"] == 2
    assert view["problems"][0]["line"] == "5" and view["problems"][1]["line"] == "—"
    assert view["preview"][0][1] == {"role": "assistant", "content": "hello"}
    no_tokens = d.report_view(DatasetReport(path="/d.jsonl", format="text", examples=3))
    assert no_tokens["summary"].tokens.startswith("no tokenizer") and no_tokens["histogram"] == []


def test_errors_become_coded_views():
    view = d.error_view(BackpropError("INPUT_DATASET_EMPTY", "nothing to train on"))
    assert view["code"] == "INPUT_DATASET_EMPTY" and view["hint"]
    unexpected = d.unexpected_error(ValueError("boom"))
    assert unexpected["code"] == "RUNTIME_UNEXPECTED" and "ValueError: boom" in unexpected["message"]
