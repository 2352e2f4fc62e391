"""Preference training from the browser: a dataset of answer pairs shows its chosen and
rejected answers, the Train page offers the method for it, a DPO run on a tiny model shows
its reward accuracy live and its method and headline on the Runs page, and the Multi-Run
page says, and shows when asked, that campaigns train SFT only."""

from __future__ import annotations

import json

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import screenshot

pytestmark = pytest.mark.browser

RUN_TIMEOUT_MS = 240_000
"""Worker start (imports torch and TRL), the reference pass and a few steps, on a busy CPU."""
DATASET = "uploads/prefs.jsonl"


@pytest.fixture
def pairs(server):
    """Answer pairs in the workspace: a short answer preferred over a rambling one."""
    uploads = server.outputs / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    rows = [{"prompt": f"What is item {i}?", "chosen": f"Item {i} is short.",
             "rejected": f"Well, item {i} is, I think, maybe, a rather long thing."} for i in range(24)]
    path = uploads / "prefs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def pick_dataset(page) -> None:
    page.get_by_test_id("dataset-select").click()
    page.get_by_role("option", name=DATASET).click()


def test_dpo_run_from_the_train_page_shows_reward_accuracy(page, server, pairs):
    page.goto(f"/dataset?path={pairs}")
    preview = page.get_by_test_id("preview")
    expect(page.get_by_test_id("report-format")).to_have_text("preference", timeout=120_000)
    expect(preview.locator("[data-role=chosen]").first).to_contain_text("Item 0 is short.")
    expect(preview.locator("[data-role=rejected]").first).to_contain_text("rather long thing")
    screenshot(page, "dataset-pairs")

    page.goto("/train")
    page.get_by_test_id("custom-model").fill(str(server.model))
    page.get_by_test_id("custom-model").blur()
    pick_dataset(page)
    # The method appears for answer pairs, DPO by default, and its defaults follow the pick.
    expect(page.get_by_test_id("method-dpo")).to_have_attribute("data-state", "checked", timeout=120_000)
    expect(page.get_by_test_id("reason-method")).to_contain_text("answer pairs")
    expect(page.get_by_test_id("reason-beta")).to_contain_text("DPO's usual strength")
    page.get_by_test_id("method-orpo").click()
    expect(page.get_by_test_id("reason-learning_rate")).to_contain_text("ORPO rate")
    page.get_by_test_id("method-dpo").click()
    expect(page.get_by_test_id("reason-learning_rate")).to_contain_text("DPO rate")
    page.get_by_test_id("field-steps").fill("6")
    page.get_by_test_id("run-name").fill("browser-dpo")
    page.get_by_test_id("start").click()

    expect(page.get_by_test_id("run-link")).to_have_text("browser-dpo")
    expect(page.get_by_test_id("run-method")).to_have_text("DPO", timeout=RUN_TIMEOUT_MS)
    expect(page.get_by_test_id("reward-accuracy")).to_contain_text("%", timeout=RUN_TIMEOUT_MS)
    expect(page.get_by_test_id("eval-reward-accuracy")).to_contain_text("%", timeout=60_000)
    expect(page.get_by_test_id("logp-chart")).not_to_have_attribute("data-points", "0")
    expect(page.get_by_test_id("run-completed")).to_be_visible(timeout=RUN_TIMEOUT_MS)
    screenshot(page, "train-dpo")

    page.goto("/runs")
    row = page.get_by_test_id("run-row").filter(has_text="browser-dpo")
    expect(row.get_by_test_id("run-method")).to_have_text("DPO")
    expect(row.get_by_test_id("learned")).to_contain_text("of pairs")
    screenshot(page, "runs-dpo")


def test_multi_run_says_campaigns_are_sft_only(page, server, pairs):
    page.goto("/multi-run")
    expect(page.get_by_test_id("sft-only-note")).to_contain_text("SFT only")
    page.get_by_test_id("custom-model").fill(str(server.model))
    pick_dataset(page)
    page.get_by_test_id("start").click()
    error = page.get_by_test_id("start-error")
    expect(error).to_contain_text("[CONFIG_INVALID]")
    expect(error).to_contain_text("SFT only")
    expect(error).to_contain_text("Hint:")
    expect(error).not_to_contain_text("Traceback")
    screenshot(page, "multirun-pairs-refused")
