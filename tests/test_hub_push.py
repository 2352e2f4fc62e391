"""Hub push: private by default, one commit with the files and a generated model card.

The hub client's network calls are intercepted; nothing reaches huggingface.co.
"""

from __future__ import annotations

import json
import socket

import pytest

from backpropagate_core.errors import BackpropError
from tests.export_fixtures import make_run, tiny_base

pytest.importorskip("huggingface_hub")


@pytest.fixture
def hub(monkeypatch):
    """Record create_repo / create_commit instead of calling the hub."""
    from huggingface_hub import HfApi

    calls: dict = {"repos": [], "commits": []}

    def create_repo(self, repo_id, **kwargs):
        calls["repos"].append((repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}"

    def create_commit(self, repo_id, operations, **kwargs):
        files = {}
        for op in operations:
            src = op.path_or_fileobj
            files[op.path_in_repo] = src if isinstance(src, bytes) else open(src, "rb").read()
        calls["commits"].append((repo_id, files, kwargs))
        return type("CommitInfo", (), {"oid": "abc123"})()

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    return calls


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tiny_base(tmp_path_factory.mktemp("hub-base"), "llama")


def test_push_run_adapter_private_with_model_card(hub, base):
    from backpropagate_core.export import push_to_hub

    run = make_run(base, name="support-bot")
    result = push_to_hub(run.id[:8], "me/support-bot")
    assert result.private and result.commit == "abc123"
    (repo, kwargs), = hub["repos"]
    assert repo == "me/support-bot" and kwargs["private"] is True and kwargs["exist_ok"] is True
    (_, files, commit), = hub["commits"]
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "README.md"} <= set(files)
    assert files["adapter_model.safetensors"] == (run.run_dir / "adapter" / "adapter_model.safetensors").read_bytes()
    card = files["README.md"].decode()
    assert card.startswith("---\nlibrary_name: peft\n")
    assert "| final loss | 1.2340 |" in card and "| dataset | chat.jsonl |" in card
    assert "/somewhere/private" not in card  # local paths never reach the card
    assert "AutoPeftModelForCausalLM" in card
    assert "backpropagate.json" not in files  # the local manifest names local paths
    assert json.loads(files["adapter_config.json"])["base_model_name_or_path"] == "base-llama"


def test_push_gguf_export_with_public_flag_and_verification(hub, base):
    from backpropagate_core.export import export_model, push_to_hub

    pytest.importorskip("llama_cpp")
    run = make_run(base)
    export_model(run.id, format="gguf", quantization="q8_0")
    push_to_hub(run.id, "me/tiny-gguf", private=False, export="gguf-q8_0")
    assert hub["repos"][0][1]["private"] is False
    (_, files, _), = hub["commits"]
    assert {"tiny-run-q8_0.gguf", "Modelfile", "export.json", "README.md"} <= set(files)
    card = files["README.md"].decode()
    assert "library_name: gguf" in card and "## Verification" in card and "ollama run" in card


def test_unknown_export_lists_what_exists(hub, base):
    from backpropagate_core.export import push_to_hub

    run = make_run(base)
    with pytest.raises(BackpropError) as err:
        push_to_hub(run.id, "me/x", export="gguf-q4_k_m")
    assert err.value.code == "INPUT_EXPORT_SOURCE_INVALID" and "none" in err.value.message
    assert not hub["commits"]


@pytest.mark.parametrize("repo", ["no-slash", "a/b/c", "/name", "me/"])
def test_invalid_repo_ids(repo, tmp_path):
    from backpropagate_core.export import push_to_hub

    with pytest.raises(BackpropError) as err:
        push_to_hub(tmp_path, repo)
    assert err.value.code == "INPUT_HUB_REPO_INVALID"


def test_unreachable_hub_is_a_retryable_coded_error(base, tmp_path):
    from backpropagate_core.export import push_to_hub

    run = make_run(base)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(BackpropError) as err:
        push_to_hub(run.id, "me/x", token="hf_test", endpoint=f"http://127.0.0.1:{port}")
    assert err.value.code == "DEP_HUB_PUSH_FAILED" and err.value.retryable
