"""Loading a model never runs code from the model's files unless the user asked for it."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from backpropagate_core.model import loader as model_mod
from backpropagate_core.config import TrainingSettings
from backpropagate_core.errors import BackpropError

REPO = Path(__file__).resolve().parents[2]


class _Evil:
    """Pickles as a call to open(marker, "w"): loading it with plain pickle creates the marker."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _copy_model(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def test_pickled_weights_are_never_executed(tiny_llama, tmp_path):
    import torch

    folder = _copy_model(tiny_llama, tmp_path / "evil-model")
    marker = tmp_path / "pwned"
    state = {k: v for k, v in __import__("safetensors.torch", fromlist=["load_file"]).load_file(
        folder / "model.safetensors").items()}
    state["lm_head.weight"] = _Evil(marker)
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(BackpropError) as info:
        model_mod.load_model(str(folder))
    assert info.value.code == "INPUT_MODEL_NOT_FOUND" and "Weights only load failed" in info.value.message
    assert not marker.exists()


def test_remote_code_is_not_run_by_default(tiny_llama, tmp_path):
    folder = _copy_model(tiny_llama, tmp_path / "remote-code-model")
    marker = tmp_path / "remote-code-ran"
    (folder / "evil_modeling.py").write_text(f"open({str(marker)!r}, 'w').close()\n"
                                             "from transformers import LlamaForCausalLM as EvilModel\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "evil_modeling.EvilModel", "AutoConfig": "evil_modeling.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    assert TrainingSettings().trust_remote_code is False
    try:
        model_mod.load_model(str(folder))
    except (BackpropError, ValueError, OSError):
        pass  # refusing is fine too; running the file is not
    assert not marker.exists()


def test_our_code_never_unpickles_without_weights_only():
    """A guard for future code: every torch.load in the engine passes weights_only=True."""
    offenders = []
    for path in (REPO / "backpropagate_core").rglob("*.py"):
        for match in re.finditer(r"torch\.load\((.*?)\)", path.read_text(), flags=re.S):
            if "weights_only=True" not in match.group(1):
                offenders.append(f"{path.relative_to(REPO)}: {match.group(0)[:80]}")
        if re.search(r"\bpickle\.loads?\(", path.read_text()):
            offenders.append(f"{path.relative_to(REPO)}: pickle.load")
    assert offenders == []


def test_trust_remote_code_flows_from_settings_to_loading(monkeypatch):
    """The training config's flag is what reaches from_pretrained (off unless set)."""
    seen = {}

    class FakeAuto:
        @staticmethod
        def from_pretrained(path, **kwargs):
            seen.update(kwargs)
            return object()

    import transformers
    monkeypatch.setattr(transformers, "AutoModelForCausalLM", FakeAuto)
    monkeypatch.setattr(model_mod, "materialize", lambda resolved: resolved.path)
    monkeypatch.setattr(model_mod, "resolve_model", lambda spec: model_mod.ResolvedModel(spec, "local", spec))
    model_mod.load_model("some/model")
    assert seen["trust_remote_code"] is False
    model_mod.load_model("some/model", trust_remote_code=True)
    assert seen["trust_remote_code"] is True
