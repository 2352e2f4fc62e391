"""The Export page end to end: from a finished run, export q4_k_m in a worker process,
see it verified in llama.cpp with the Ollama command to copy, then chat with both models.

The run is made directly in the server's store (a tiny Llama 256 wide, so llama.cpp's
k-quants really apply; its LoRA B weights are random so merging changes the weights).
No Ollama server exists on these machines: when Ollama's port 11434 is free, the test
serves the documented registration API there (tests/ollama_contract_server.py), so the
app registers with its default settings; when something already listens there, the
test only checks the command for registering by hand.
"""

from __future__ import annotations

import contextlib

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import expect

from backpropagate_core.runs.store import RunStore
from tests.browser.conftest import screenshot
from tests.export_fixtures import make_run, tiny_base
from tests.ollama_contract_server import OllamaContractServer

pytestmark = pytest.mark.browser
pytest.importorskip("llama_cpp")

EXPORT_TIMEOUT_MS = 420_000
"""Worker start (imports torch), merge, write, quantize and the llama.cpp check, on a busy CPU."""
CHAT_TIMEOUT_MS = 300_000


@pytest.fixture
def finished_run(server, monkeypatch, tmp_path):
    monkeypatch.setenv("BACKPROPAGATE_HOME", str(server.home))
    return make_run(tiny_base(tmp_path, "llama"), name="export-bot")


def ollama_on_default_port():
    try:
        return OllamaContractServer(port=11434)
    except OSError:
        return None


def test_export_q4_k_m_verified_with_ollama_command_then_chat(page, server, finished_run):
    run = finished_run
    ollama = ollama_on_default_port()
    with ollama or contextlib.nullcontext():
        page.goto(f"/export?run={run.id}")
        expect(page.get_by_test_id("export-run-select")).to_contain_text("export-bot")
        expect(page.get_by_test_id("export-source-select")).to_contain_text("Final adapter")
        # Each quantization says what it is and how big the file will be.
        expect(page.get_by_test_id("quant-size-q4_k_m")).to_contain_text("≈")
        expect(page.get_by_test_id("quant-size-q8_0")).to_contain_text("≈")
        page.get_by_test_id("quant-q4_k_m").click()
        # A name Ollama would refuse is a coded error at once, before any process starts.
        page.get_by_test_id("ollama-name").fill("not a name!")
        page.get_by_test_id("export-start").click()
        expect(page.get_by_test_id("start-error")).to_contain_text("[INPUT_OLLAMA_NAME_INVALID]")
        expect(page.get_by_test_id("start-error")).to_contain_text("Hint:")
        name = "export-bot:q4" if ollama else ""
        page.get_by_test_id("ollama-name").fill(name)
        page.get_by_test_id("export-start").click()

        expect(page.get_by_test_id("export-stage").first).to_be_visible(timeout=60_000)
        with contextlib.suppress(PlaywrightTimeout):  # the stages can pass quicker than a poll
            page.locator("[data-testid=export-stage][data-status=active]").first.wait_for(timeout=30_000)
            screenshot(page, "export-progress")
        expect(page.get_by_test_id("export-verified")).to_have_text("verified", timeout=EXPORT_TIMEOUT_MS)
        checks = page.get_by_test_id("export-checks")
        for label in ("Max logit difference", "Top-1 agreement", "Tokenization", "Greedy continuation"):
            expect(checks).to_contain_text(label)
        expect(checks.locator("[data-status=bad]")).to_have_count(0)
        expect(page.get_by_test_id("export-path")).to_contain_text("export-bot-q4_k_m.gguf")
        command = page.get_by_test_id("ollama-command")
        if ollama:
            expect(command).to_have_text("ollama run export-bot:q4")
            assert "export-bot:q4" in ollama.models
        else:
            expect(command).to_contain_text("ollama create export-bot:q4_k_m -f Modelfile")
        expect(page.get_by_test_id("export-run")).to_contain_text("gguf-q4_k_m")
        page.evaluate("window.scrollTo(0, 0)")  # else the sticky header lands mid-screenshot
        screenshot(page, "export")

    export = RunStore(server.home).list(kind="export", parent=run.id)[0]  # the export is a run of its own
    assert export.status == "completed" and export.summary["result"]["verification"]["passed"]
    from tests.export_fixtures import tensor_types

    assert "Q4_K" in tensor_types(export.summary["result"]["path"]).values()

    # Chat: the fine-tuned model and the GGUF just exported answer the same prompt.
    expect(page.get_by_test_id("chat-gguf")).to_contain_text("gguf-q4_k_m")
    page.get_by_test_id("chat-prompt").fill("What is the capital of France?")
    page.get_by_test_id("chat-ask").click()
    expect(page.get_by_test_id("answer-transformers")).to_be_visible(timeout=CHAT_TIMEOUT_MS)
    # The GGUF answers after the fine-tuned model, in its own time on a busy machine.
    expect(page.get_by_test_id("answer-llama.cpp")).to_contain_text("tokens", timeout=CHAT_TIMEOUT_MS)
    expect(page.get_by_test_id("answer-base")).to_contain_text("Base model")  # base · fine-tuned · GGUF
    expect(page.get_by_test_id("chat-verdict")).not_to_be_empty()
    page.evaluate("window.scrollTo(0, 0)")
    screenshot(page, "export-chat")
