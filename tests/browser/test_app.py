"""The web app end to end: chromium against `backprop ui` in prod mode, real training on a
tiny model in worker processes. Screenshots of every page land in test-artifacts/screenshots/."""

from __future__ import annotations

import json

import pytest
from playwright.sync_api import expect

from backpropagate_core.runs.store import RunStore
from tests.browser.conftest import screenshot

pytestmark = pytest.mark.browser

RUN_TIMEOUT_MS = 240_000
"""A tiny-model run: worker start (imports torch) plus a few seconds of steps, on a busy CPU."""


def chart_points(page) -> int:
    return int(page.get_by_test_id("loss-chart").get_attribute("data-points") or 0)


def wait_points(page, at_least: int, timeout_ms: int = RUN_TIMEOUT_MS) -> None:
    page.wait_for_function(
        f"() => Number(document.querySelector('[data-testid=loss-chart]')?.dataset.points) >= {at_least}",
        timeout=timeout_ms)


def fill_settings(page, server, steps: int, name: str) -> None:
    """The custom model box gets the tiny model's folder, as a person would type it."""
    page.goto("/train")
    expect(page.get_by_test_id("custom-model")).to_be_visible()
    page.get_by_test_id("custom-model").fill(str(server.model))
    page.get_by_test_id("custom-model").blur()
    expect(page.get_by_test_id("dataset-select")).to_contain_text("quickstart.jsonl")
    page.get_by_test_id("field-steps").fill(str(steps))
    page.get_by_test_id("run-name").fill(name)


def write_jsonl(path, rows, bad_line_at: int | None = None):
    lines = [json.dumps(r) for r in rows]
    if bad_line_at:
        lines.insert(bad_line_at - 1, "{this line is broken")
    path.write_text("\n".join(lines) + "\n")
    return path


def chat(i: int) -> dict:
    return {"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                         {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]}


def test_upload_dataset_shows_report(page, server, tmp_path):
    data = write_jsonl(tmp_path / "my math data.jsonl", [chat(i) for i in range(12)], bad_line_at=5)
    page.goto("/dataset")
    page.locator("input[type=file]").set_input_files(str(data))

    expect(page.get_by_test_id("report-examples")).to_have_text("12", timeout=120_000)
    expect(page.get_by_test_id("report-format")).not_to_be_empty()
    expect(page.get_by_test_id("problem-count")).to_contain_text("1 ")
    problems = page.get_by_test_id("problems")
    expect(problems).to_contain_text("5")
    expect(problems).to_contain_text("INPUT_DATASET_INVALID")
    expect(page.get_by_test_id("histogram").locator(".recharts-bar-rectangle").first).to_be_visible()
    expect(page.get_by_test_id("preview")).to_contain_text("What is 0 plus 0?")
    expect(page.get_by_test_id("preview")).to_contain_text("0 plus 0 is 0.")
    # The file was stored under the output folder with a sanitised name.
    assert (server.outputs / "uploads" / "my_math_data.jsonl").is_file()
    screenshot(page, "dataset")


def test_bad_files_show_coded_errors(page, server, tmp_path):
    page.goto("/dataset")
    not_json = tmp_path / "broken.jsonl"
    not_json.write_text("hello, this is not json\n")
    page.locator("input[type=file]").set_input_files(str(not_json))
    error = page.get_by_test_id("upload-error")
    expect(error).to_contain_text("[UI_UPLOAD_REJECTED]")
    expect(error).to_contain_text("Hint:")

    unknown = write_jsonl(tmp_path / "unknown.jsonl", [{"foo": i, "bar": "x"} for i in range(5)])
    page.locator("input[type=file]").set_input_files(str(unknown))
    report_error = page.get_by_test_id("report-error")
    expect(report_error).to_contain_text("[INPUT_DATASET", timeout=120_000)
    expect(report_error).not_to_contain_text("Traceback")
    screenshot(page, "dataset-error")


def test_memory_estimate_follows_the_form(page, server):
    """The Train page shows the estimator's figure for the settings in the form, and warns
    when they would not fit this machine."""
    fill_settings(page, server, steps=5, name="memory-check")
    note = page.get_by_test_id("memory-estimate")
    expect(note).to_contain_text("Memory: about", timeout=120_000)
    expect(note).to_contain_text("of RAM")
    expect(note).not_to_contain_text("may not fit")
    # Left empty, the batch is micro-batches filled to the plan's token budget.
    expect(page.get_by_test_id("field-batch_tokens")).to_have_value("1024")
    expect(page.get_by_test_id("reason-batch_tokens")).to_contain_text("tokens")
    expect(page.get_by_test_id("field-batch_size")).to_have_value("")
    expect(page.get_by_test_id("reason-batch_size")).to_contain_text("filled to batch_tokens")
    screenshot(page, "train-token-budget")
    page.get_by_test_id("field-batch_size").fill("100000")
    page.get_by_test_id("field-max_seq_len").fill("8192")
    expect(note).to_contain_text("may not fit")
    screenshot(page, "train-memory-warning")
    page.get_by_test_id("field-batch_size").fill("2")
    expect(note).not_to_contain_text("may not fit")


def test_train_run_streams_and_finishes(page, server):
    fill_settings(page, server, steps=40, name="browser-finish")
    expect(page.get_by_test_id("reason-learning_rate")).to_contain_text("LoRA rate", timeout=120_000)
    expect(page.get_by_test_id("reason-steps")).to_contain_text("set by you")
    page.get_by_test_id("start").click()
    expect(page.get_by_test_id("run-link")).to_have_text("browser-finish")

    expect(page.get_by_test_id("run-status")).to_have_text("running", timeout=RUN_TIMEOUT_MS)
    wait_points(page, 3)
    first = chart_points(page)
    wait_points(page, first + 3)
    assert chart_points(page) > first
    expect(page.get_by_test_id("tokens-per-s")).to_contain_text("tok/s")
    expect(page.get_by_test_id("hardware")).to_contain_text("CPU", timeout=60_000)
    expect(page.get_by_test_id("event-log")).to_contain_text("started")
    screenshot(page, "train-live")

    expect(page.get_by_test_id("run-completed")).to_be_visible(timeout=RUN_TIMEOUT_MS)
    assert float(page.get_by_test_id("final-loss").inner_text()) > 0
    expect(page.get_by_test_id("artifacts")).to_contain_text("adapter")
    expect(page.get_by_test_id("header-status")).to_have_text("completed", timeout=10_000)
    run = RunStore(server.home).list(status="completed")[0]
    assert run.name == "browser-finish" and run.final_loss is not None
    assert chart_points(page) >= run.step  # every step, up to where early stopping ended it

    # What the model answers now: the held-out questions of quickstart.jsonl, with the
    # reference, the base model's answer and the answer at the latest evaluation.
    answers = page.get_by_test_id("answers-table")
    expect(answers).to_be_visible()
    samples = [e for _, e in RunStore(server.home).events(run.id, types=("samples",))]
    assert samples and samples[-1]["samples"]
    expect(answers).to_contain_text(samples[-1]["samples"][0]["prompt"][:40])
    expect(page.get_by_test_id("answer-score")).to_contain_text("%")
    expect(page.get_by_test_id("score-chart")).to_be_visible()
    answers.scroll_into_view_if_needed()
    screenshot(page, "train-finished")


def test_stop_midway_and_reload_stays_live(page, server, browser):
    fill_settings(page, server, steps=5000, name="browser-stop")
    page.get_by_test_id("start").click()
    expect(page.get_by_test_id("run-link")).to_have_text("browser-stop")  # not the last run's chart
    expect(page.get_by_test_id("run-status")).to_have_text("running", timeout=RUN_TIMEOUT_MS)
    wait_points(page, 3)

    # Reload: the page finds the active run in the store and keeps streaming.
    page.reload()
    expect(page.get_by_test_id("run-status")).to_have_text("running")
    wait_points(page, 1)
    before = int(page.get_by_test_id("step").inner_text())
    page.wait_for_function(
        f"() => Number(document.querySelector('[data-testid=step]')?.innerText) > {before}", timeout=60_000)

    # A second tab shows the same live run.
    other = browser.new_context(viewport={"width": 1400, "height": 1000}, base_url=server.url).new_page()
    other.goto("/train")
    expect(other.get_by_test_id("run-link")).to_have_text("browser-stop")
    expect(other.get_by_test_id("run-status")).to_have_text("running")
    other.context.close()

    page.get_by_test_id("stop").click()
    expect(page.get_by_test_id("run-status")).to_have_text("cancelled", timeout=120_000)
    expect(page.get_by_test_id("run-cancelled")).to_be_visible()
    screenshot(page, "train-cancelled")
    run = [r for r in RunStore(server.home).list() if r.name == "browser-stop"][0]
    assert run.status == "cancelled" and 0 < run.step < 5000


def test_runs_page_and_detail(page, server):
    store = RunStore(server.home)
    if not store.list(status="completed"):
        pytest.skip("needs the finished run of test_train_run_streams_and_finishes")
    page.goto("/runs")
    expect(page.get_by_test_id("run-row").first).to_be_visible()
    completed = page.locator("[data-testid=run-row][data-status=completed]")
    expect(completed.first).to_be_visible()
    expect(completed.first.locator(".recharts-line")).to_have_count(1)
    expect(completed.first.get_by_test_id("learned")).to_contain_text("%")  # held-out score, base score
    screenshot(page, "runs")

    # The status filter narrows the table.
    page.get_by_test_id("status-filter").click()
    page.get_by_role("option", name="cancelled").click()
    expect(page.locator("[data-testid=run-row][data-status=completed]")).to_have_count(0)
    page.get_by_test_id("status-filter").click()
    page.get_by_role("option", name="completed").click()
    expect(completed.first).to_be_visible()

    completed.first.get_by_role("link").first.click()
    expect(page.get_by_test_id("detail-name")).to_have_text("browser-finish")
    expect(page.get_by_test_id("config")).to_contain_text("learning_rate")
    expect(page.get_by_test_id("config")).to_contain_text("LoRA rate")
    expect(page.get_by_test_id("events")).to_contain_text("finished")
    expect(page.get_by_test_id("detail-artifacts")).to_contain_text("adapter")
    expect(page.get_by_test_id("answers-table")).to_be_visible()
    assert chart_points(page) >= RunStore(server.home).list(status="completed")[0].step
    screenshot(page, "run-detail")


def test_compare_two_runs(page, server):
    store = RunStore(server.home)
    runs = store.list(kind="train")
    if len(runs) < 2:
        pytest.skip("needs the runs of the training tests above")
    page.goto("/runs")
    compare = page.get_by_test_id("compare-runs")
    expect(compare).to_be_disabled()
    ticks = page.get_by_test_id("pick-run")
    expect(ticks.nth(1)).to_be_visible()
    ticks.nth(0).click()
    ticks.nth(1).click()
    expect(compare).to_be_enabled()
    compare.click()
    page.wait_for_url("**/runs/compare?a=*")
    expect(page.get_by_test_id("settings-diff")).to_contain_text("steps")  # 40 vs 5000
    expect(page.get_by_test_id("compare-chart").locator(".recharts-line")).to_have_count(4, timeout=30_000)
    expect(page.get_by_test_id("score-A")).not_to_be_empty()
    screenshot(page, "compare")


def test_resume_and_delete_from_detail(page, server):
    cancelled = [r for r in RunStore(server.home).list(status="cancelled")]
    if not cancelled:
        pytest.skip("needs the cancelled run of test_stop_midway_and_reload_stays_live")
    run = cancelled[0]
    page.goto(f"/runs/{run.id}")
    expect(page.get_by_test_id("run-status")).to_have_text("cancelled")
    page.get_by_test_id("resume").click()
    expect(page.get_by_test_id("run-status")).to_have_text("running", timeout=RUN_TIMEOUT_MS)
    # Stop it again from the store's side; the page follows.
    (run.run_dir / "CANCEL").touch()
    expect(page.get_by_test_id("run-status")).to_have_text("cancelled", timeout=120_000)

    page.get_by_test_id("delete").click()
    expect(page.get_by_role("alertdialog")).to_contain_text("Delete this run?")
    screenshot(page, "run-delete-confirm")
    page.get_by_test_id("confirm-delete").click()
    expect(page).to_have_url(f"{server.url}/runs")
    assert run.id not in [r.id for r in RunStore(server.home).list()]
