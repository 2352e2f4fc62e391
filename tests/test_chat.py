"""Chat with the result, and the export commands end to end through the CLI."""

from __future__ import annotations

import json

import pytest

from tests.export_fixtures import make_run, tiny_base
from tests.ollama_contract_server import OllamaContractServer

pytest.importorskip("llama_cpp")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tiny_base(tmp_path_factory.mktemp("chat-base"), "qwen2")


def test_chat_answers_alike_from_transformers_and_the_f16_gguf(base):
    from backpropagate_core.export import export_model
    from backpropagate_core.export.chat import ChatSession

    run = make_run(base)
    exported = export_model(run.id, format="gguf", quantization="f16")
    session = ChatSession(run.id[:8], max_new_tokens=12)
    assert session.gguf_path == exported.path  # the run's newest GGUF is picked up
    answers = session.ask([{"role": "user", "content": "What is the capital of France?"}])
    hf, cpp = answers["transformers"], answers["llama.cpp"]
    assert hf.tokens and hf.tokens == cpp.tokens
    assert hf.text == cpp.text


def test_cli_export_registers_with_ollama_and_prints_json(base, capsys):
    from backpropagate_core.cli.app import main
    from backpropagate_core.runs.store import RunStore

    run = make_run(base, name="cli-bot")
    with OllamaContractServer() as server:
        code = main(["export", run.id[:8], "--format", "gguf", "--quantization", "q8_0",
                     "--ollama", "--ollama-host", server.url, "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    result = json.loads(out.strip().splitlines()[-1])
    assert result["verification"]["passed"] and result["quantization"] == "q8_0"
    assert result["ollama_registration"]["name"] == "cli-bot:q8_0"
    assert "cli-bot:q8_0" in server.models
    assert RunStore().get(run.id).summary["exports"]["gguf-q8_0"]["verification"]["passed"]
    # The CLI's export is an export run of the run, as the UI's is.
    [export] = RunStore().list(kind="export", parent=run.id)
    assert export.status == "completed" and export.artifacts["export"] == result["path"]
    assert export.summary["ollama"]["name"] == "cli-bot:q8_0"


def test_cli_ollama_register_an_existing_export(base, capsys):
    from backpropagate_core.cli.app import main
    from backpropagate_core.export import export_model

    run = make_run(base)
    result = export_model(run.id, format="gguf", quantization="q8_0", verify=False)
    # Without verification the logits are not compared; the cheap tokenizer check still runs.
    assert result.verification["logits_checked"] is False and result.verification["tokenization_match"]
    with OllamaContractServer() as server:
        assert main(["ollama-register", str(result.path), "--name", "later:q8", "--host", server.url]) == 0
    assert "ollama run later:q8" in capsys.readouterr().out
    assert server.models["later:q8"]["files"] == {result.path.name: "sha256:" + _sha256(result.path)}


def _sha256(path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_cli_reports_coded_errors(base, capsys):
    from backpropagate_core.cli.app import main

    run = make_run(base)
    assert main(["export", run.id, "--format", "gguf", "--quantization", "q9"]) == 1
    assert "INPUT_EXPORT_OPTION_INVALID" in capsys.readouterr().err
    assert main(["export", run.id, "--ollama", "--ollama-name", "bad name", "--ollama-host",
                 "http://127.0.0.1:9", "-q", "f16"]) == 1
    assert "INPUT_OLLAMA_NAME_INVALID" in capsys.readouterr().err


def test_cli_chat_once(base, capsys):
    from backpropagate_core.cli.app import main

    run = make_run(base)
    assert main(["chat", run.id, "--prompt", "Hello", "--max-new-tokens", "4"]) == 0
    assert "transformers" in capsys.readouterr().out
