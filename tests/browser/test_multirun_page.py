"""The Multi-Run page end to end: start a tiny 3-run SLAO campaign from the page, watch its
timeline, loss curve with merge points and forgetting heat-map fill in, reload, then run
the same campaign in sequential mode and compare the two."""

from __future__ import annotations

import json
import re

import pytest
from playwright.sync_api import expect

from backpropagate_core.runs.store import RunStore
from tests.browser.conftest import screenshot

pytestmark = pytest.mark.browser

CAMPAIGN_TIMEOUT_MS = 420_000
"""Worker start (imports torch), 3 × 3 steps and 6 validation passes on a tiny model, busy CPU."""
TASKS = [
    lambda k: (f"What is {k} plus {k + 1}?", f"{2 * k + 1}."),
    lambda k: (f"Which city is capital number {k}?", "Paris is the capital of France."),
    lambda k: (f"Bread step {k}?", "Knead the dough and let it rise."),
]


@pytest.fixture
def tasks(server):
    """Three small tasks, one after another, in the workspace's uploads: chunk i is task i."""
    uploads = server.outputs / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for make in TASKS for q, a in map(make, range(10))]
    path = uploads / "mr-tasks.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def start_campaign(page, server, mode_label: str, name: str) -> None:
    page.goto("/multi-run")
    expect(page.get_by_test_id("custom-model")).to_be_visible()
    page.get_by_test_id("custom-model").fill(str(server.model))
    page.get_by_test_id("dataset-select").click()
    page.get_by_role("option", name="uploads/mr-tasks.jsonl").click()
    for key, value in (("num_runs", "3"), ("steps_per_run", "3"), ("samples_per_run", "10"),
                       ("replay_fraction", "0")):
        page.get_by_test_id(f"field-{key}").fill(value)
    page.get_by_test_id("merge-mode").click()
    page.get_by_role("option", name=mode_label).click()
    page.get_by_test_id("run-name").fill(name)
    page.get_by_test_id("start").click()


def wait_done(page, name: str) -> None:
    expect(page.get_by_test_id("run-link")).to_have_text(name, timeout=60_000)
    expect(page.locator("[data-testid=timeline-run][data-state=done]")).to_have_count(
        3, timeout=CAMPAIGN_TIMEOUT_MS)
    expect(page.get_by_test_id("run-completed")).to_be_visible(timeout=60_000)


def test_campaign_timeline_heatmap_and_comparison(page, server, tasks):
    start_campaign(page, server, "slao: merge between runs", "mr-slao")
    # The timeline is there from the start: three runs, the first one under way.
    expect(page.get_by_test_id("timeline-run")).to_have_count(3, timeout=60_000)
    expect(page.get_by_test_id("stop")).to_be_enabled(timeout=60_000)
    wait_done(page, "mr-slao")

    expect(page.get_by_test_id("campaign-mode")).to_have_text("slao")
    expect(page.get_by_test_id("runs-done")).to_have_text("3 of 3 runs done")
    chart = page.get_by_test_id("campaign-chart")
    expect(chart).to_have_attribute("data-markers", "3")
    assert int(chart.get_attribute("data-points")) == 9
    expect(chart.locator(".recharts-reference-line")).to_have_count(3)
    expect(chart).to_contain_text("merge 2")

    store = RunStore(server.home)
    run = [r for r in store.list(kind="multi_run") if r.name == "mr-slao"][0]
    matrix = run.summary["forgetting"]
    cells = page.get_by_test_id("heat-loss")
    expect(cells).to_have_count(9)
    shown = cells.all_inner_texts()
    assert shown == ["—" if x is None else f"{x:.4f}" for row in matrix for x in row]
    expect(page.get_by_test_id("heat-delta")).to_have_count(3)
    assert re.fullmatch(r"[+-]\d+\.\d{4}", page.get_by_test_id("avg-forgetting").inner_text())
    assert page.get_by_test_id("avg-forgetting").inner_text() == f"{run.summary['avg_forgetting']:+.4f}"
    expect(page.get_by_test_id("event-log")).to_contain_text("merged after run 3")
    expect(page.get_by_test_id("campaign-select")).to_contain_text("completed", timeout=10_000)
    page.evaluate("window.scrollTo(0, 0)")  # else the sticky header lands mid-screenshot
    screenshot(page, "multi-run")

    # Reload: the store is the truth, the same campaign comes back.
    page.reload()
    expect(page.get_by_test_id("run-link")).to_have_text("mr-slao")
    expect(page.locator("[data-testid=timeline-run][data-state=done]")).to_have_count(3)

    # The same campaign without merging, then both side by side.
    start_campaign(page, server, "sequential: no merge", "mr-sequential")
    wait_done(page, "mr-sequential")
    expect(page.get_by_test_id("campaign-mode")).to_have_text("sequential")
    expect(page.get_by_test_id("campaign-chart")).to_contain_text("run 2 ends")

    comparison = page.get_by_test_id("comparison")
    expect(comparison).to_be_visible(timeout=30_000)
    expect(page.get_by_test_id("compare-a")).to_contain_text("mr-sequential")
    expect(page.get_by_test_id("compare-b")).to_contain_text("mr-slao")
    expect(page.get_by_test_id("cmp-row")).to_have_count(3)
    expect(page.get_by_test_id("cmp-avg-b")).to_have_text(f"{run.summary['avg_forgetting']:+.4f}")
    expect(comparison.locator(".recharts-line")).to_have_count(2)
    page.evaluate("window.scrollTo(0, 0)")
    screenshot(page, "multi-run-compare")
