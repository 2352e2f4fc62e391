"""What an export starts from, and the trained model as transformers sees it.

A source is a run id (or prefix), an adapter folder (a run's `adapter/` or one of its
checkpoints, or any peft folder) or a merged model folder. Adapters are merged into
their base with peft's `merge_and_unload` in float32, so the merged weights carry no
rounding beyond the base's own; the output dtype is chosen when saving.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backpropagate_core.errors import BackpropError

ADAPTER_CONFIG = "adapter_config.json"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


@dataclass
class Source:
    kind: str
    """"adapter" (LoRA on a base model) or "merged" (full weights)."""
    path: Path
    """The adapter folder or the model folder."""
    base: str | None = None
    """Base model spec (preset, folder or hub id) of an adapter."""
    run_id: str | None = None
    run_dir: Path | None = None
    label: str = "model"
    """Short name for files: the run's name or the folder's."""

    def default_output_dir(self) -> Path:
        if self.run_dir is None:
            raise BackpropError(
                "INPUT_EXPORT_OPTION_INVALID",
                f"{self.path} does not belong to a run, so there is no run folder to write into",
                hint="Pass --output DIR (output_dir=...) to choose where the export goes.")
        return self.run_dir / "exports"


def resolve_source(source: str | Path) -> Source:
    """Find out what `source` names: a run, an adapter folder or a model folder."""
    from backpropagate_core.runs.store import RunStore

    text = str(source).strip()
    path = Path(text).expanduser()
    store = RunStore()
    if path.is_dir():
        return _from_folder(path.resolve(), store)
    if path.exists() or not text or "/" in text or text.startswith((".", "~")):
        raise BackpropError("INPUT_EXPORT_SOURCE_INVALID", f"{text!r} is not a folder or a run id")
    run = store.get(text)
    adapter = Path(run.artifacts.get("adapter") or run.run_dir / "adapter")
    if not (adapter / ADAPTER_CONFIG).is_file():
        raise BackpropError(
            "INPUT_EXPORT_SOURCE_INVALID",
            f"run {run.id[:8]} ({run.status}) has no final adapter at {adapter}",
            hint=f"Export a checkpoint folder instead, e.g. {run.run_dir / 'checkpoints'}/checkpoint-N.")
    return Source("adapter", adapter, base_of_adapter(adapter, run.config.get("model")),
                  run.id, run.run_dir, _slug(run.name or run.config.get("model") or "model"))


def _from_folder(path: Path, store) -> Source:
    run_id, run_dir = _owning_run(path, store)
    if (path / ADAPTER_CONFIG).is_file():
        label = path.parent.name if path.name == "adapter" else path.name
        base = None
        if run_id:
            run = store.get(run_id)
            label = run.name or run.config.get("model") or label
            # A checkpoint has no manifest; its adapter_config names wherever the base was
            # loaded from, while the run knows the spec the user gave.
            if not (path / "backpropagate.json").is_file():
                base = run.config.get("model")
        return Source("adapter", path, base or base_of_adapter(path), run_id, run_dir, _slug(label))
    if (path / "config.json").is_file() and any(path.glob("*.safetensors")):
        return Source("merged", path, None, run_id, run_dir, _slug(path.name))
    raise BackpropError("INPUT_EXPORT_SOURCE_INVALID",
                        f"{path} has neither adapter_config.json nor config.json with safetensors weights")


def _owning_run(path: Path, store) -> tuple[str | None, Path | None]:
    """The run whose folder contains `path`, if any."""
    runs_dir = store.runs_dir.resolve()
    if runs_dir not in path.parents:
        return None, None
    run_dir = runs_dir / path.relative_to(runs_dir).parts[0]
    try:
        return store.get(run_dir.name).id, run_dir
    except BackpropError:
        return None, run_dir


def base_of_adapter(adapter_dir: Path, fallback: str | None = None) -> str:
    from backpropagate_core.model.loader import base_model_of

    try:
        return base_model_of(adapter_dir)
    except (OSError, KeyError, json.JSONDecodeError):
        if fallback:
            return fallback
        raise BackpropError("INPUT_EXPORT_SOURCE_INVALID",
                            f"{adapter_dir} does not say which base model it was trained on") from None


def _slug(text: str) -> str:
    name = Path(str(text)).name or "model"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.").lower()[:60] or "model"


def load_tokenizer(src: Source):
    """The tokenizer the run trained with: the adapter's own copy, else the base's."""
    from transformers import AutoTokenizer

    from backpropagate_core.model import loader as model_mod
    from backpropagate_core.data.templates import ensure_chat_template

    if src.kind == "merged" or any((src.path / f).is_file() for f in _TOKENIZER_FILES):
        tokenizer = AutoTokenizer.from_pretrained(src.path)
    else:
        tokenizer = model_mod.load_tokenizer(src.base)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # Training installs this same fallback when a model has no template of its own.
    ensure_chat_template(tokenizer)
    return tokenizer


def load_trained(src: Source, merge: bool = True):
    """The trained model in float32, on CPU: a PeftModel (merge=False) or merged weights."""
    import torch
    from transformers import AutoModelForCausalLM

    from backpropagate_core.model import loader as model_mod

    if src.kind == "merged":
        return AutoModelForCausalLM.from_pretrained(src.path, dtype=torch.float32).eval()
    from peft import PeftModel

    base = model_mod.load_model(src.base, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, str(src.path)).eval()
    return peft_model.merge_and_unload() if merge else peft_model


def merge_in_place(model: Any):
    """Merged weights from a PeftModel (no-op for a plain model)."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


def hf_config(model: Any) -> dict:
    """The HF config as a dict, with the architecture named (GGUF needs it); a multimodal
    model's language-model settings (a GGUF holds that part) are at the top level."""
    from backpropagate_core.export.gguf_gemma import text_config

    config = model.config.to_dict()
    if not config.get("architectures"):
        config["architectures"] = [type(model).__name__]
    return text_config(config)


def save_merged(model: Any, tokenizer: Any, target: Path, dtype: str) -> Path:
    """Save merged weights (safetensors) and the tokenizer with its chat template."""
    import torch

    torch_dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[dtype]
    model.to(torch_dtype).save_pretrained(target, safe_serialization=True)
    model.to(torch.float32)
    tokenizer.save_pretrained(target)
    return target


def copy_adapter(src: Source, tokenizer: Any, target: Path) -> Path:
    """The peft adapter files plus the tokenizer, so the folder alone loads on its base."""
    import shutil

    shutil.copytree(src.path, target, dirs_exist_ok=True)
    if not any((target / f).is_file() for f in _TOKENIZER_FILES):
        tokenizer.save_pretrained(target)
    return target


def natural_dtype(src: Source) -> str:
    """The dtype the model was published in (f32 when it does not say)."""
    from transformers import AutoConfig

    from backpropagate_core.model import loader as model_mod

    where = src.path if src.kind == "merged" else model_mod.materialize(model_mod.resolve_model(src.base))
    config = AutoConfig.from_pretrained(where)
    name = str(getattr(config, "dtype", None) or "float32").replace("torch.", "")
    return {"bfloat16": "bf16", "float16": "f16"}.get(name, "f32")
