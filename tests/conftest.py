import os
from pathlib import Path

import pytest

from tests.tiny import build_model, build_tokenizer

# Tests never reach a model hub; the engine must resolve everything locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return build_model(tmp_path_factory.mktemp("tiny-llama"), arch="llama")


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory) -> Path:
    return build_model(tmp_path_factory.mktemp("tiny-qwen2"), arch="qwen2")


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    return build_tokenizer(tmp_path_factory.mktemp("tiny-tok"))


@pytest.fixture(scope="session")
def tiny_tokenizer_no_template(tmp_path_factory):
    return build_tokenizer(tmp_path_factory.mktemp("tiny-tok-plain"), chat_template=None)


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch) -> Path:
    """Each test gets its own BACKPROPAGATE_HOME so run stores never mix."""
    home = tmp_path / "bp-home"
    monkeypatch.setenv("BACKPROPAGATE_HOME", str(home))
    return home
