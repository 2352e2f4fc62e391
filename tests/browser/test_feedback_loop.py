"""The chat-feedback loop end to end: chat with a finished run on the Export page, turn
answers down and write the wanted ones, see each pair saved, then "Train on my feedback"
starts a DPO run from that run's adapter and the Train page shows its live reward accuracy.
"""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from backpropagate_core.data import feedback
from backpropagate_core.runs.store import RunStore
from tests.browser.conftest import screenshot
from tests.export_fixtures import make_run, tiny_base

pytestmark = pytest.mark.browser

CHAT_TIMEOUT_MS = 300_000
TRAIN_TIMEOUT_MS = 300_000

QUESTIONS = ["What colour is the sky?", "Name a fruit.", "What is two plus two?", "Where is Paris?"]
WANTED = ["Blue.", "An apple.", "Four.", "In France."]


@pytest.fixture
def finished_run(server, monkeypatch, tmp_path):
    monkeypatch.setenv("BACKPROPAGATE_HOME", str(server.home))
    return make_run(tiny_base(tmp_path, "llama"), name="feedback-bot")


def test_corrections_become_pairs_and_train_a_dpo_run(page, server, finished_run):
    run = finished_run
    page.goto(f"/export?run={run.id}")
    expect(page.get_by_test_id("feedback-pairs")).to_contain_text("0 preference pairs")
    expect(page.get_by_test_id("feedback-train")).to_be_disabled()
    for n, (question, wanted) in enumerate(zip(QUESTIONS, WANTED), 1):
        page.get_by_test_id("chat-prompt").fill(question)
        page.get_by_test_id("chat-ask").click()
        expect(page.get_by_test_id("feedback-down")).to_be_visible(timeout=CHAT_TIMEOUT_MS)
        page.get_by_test_id("feedback-down").click()
        expect(page.get_by_test_id("feedback-saved")).to_contain_text("marked wrong")
        page.get_by_test_id("feedback-edit").click()
        page.get_by_test_id("feedback-edit-text").fill(wanted)
        page.get_by_test_id("feedback-edit-save").click()
        expect(page.get_by_test_id("feedback-saved")).to_contain_text("correction saved")
        expect(page.get_by_test_id("feedback-pairs")).to_contain_text(f"{n} preference pairs")
        if n < feedback.MIN_PAIRS:
            expect(page.get_by_test_id("feedback-message")).to_contain_text("needs at least 4")
    # Saved in the run's folder: the edit is chosen over the model's answer.
    pairs = feedback.pairs(feedback.items(run.run_dir))
    assert [p.chosen for p in pairs] == WANTED
    assert all(p.rejected and p.rejected != p.chosen for p in pairs)
    page.evaluate("window.scrollTo(0, 0)")  # else the sticky header lands mid-screenshot
    screenshot(page, "feedback-chat")

    expect(page.get_by_test_id("feedback-train")).to_be_enabled()
    page.get_by_test_id("feedback-train").click()
    page.wait_for_url("**/train", timeout=60_000)
    # Live: the DPO run's reward accuracy appears as a figure once its first step is logged.
    expect(page.get_by_test_id("reward-accuracy").first).to_contain_text("%", timeout=TRAIN_TIMEOUT_MS)
    screenshot(page, "feedback-dpo-run")

    child = [r for r in RunStore(server.home).list() if r.id != run.id and r.kind == "train"][0]
    assert child.config["training"]["method"] == "dpo"
    assert child.config["start_from"]["run"] == run.id
    assert child.config["data"].endswith(f"feedback-{run.id[:8]}.jsonl")
