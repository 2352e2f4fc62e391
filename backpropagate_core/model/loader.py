"""Turn a model spec into a loaded model, tokenizer and LoRA adapter.

A spec is a preset name (`smollm2-135m`), a local folder with `config.json`, a local
`.gguf` file (transformers dequantizes it), or a hub id (`Qwen/Qwen2.5-0.5B-Instruct`,
downloaded on a networked machine). GGUF sources are converted once to a safetensors
folder in the cache, because dequantizing takes ~40 s and reloading the folder <1 s.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from backpropagate_core.model import presets
from backpropagate_core.errors import BackpropError

UNSLOTH_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
"""The projections Unsloth's fast LoRA kernels cover (its decoder architectures all use these names)."""
_FUSED_TARGETS = ["qkv_proj", "gate_up_proj"]
"""Phi-3's names for q/k/v and gate/up, each pair or triple fused into one Linear."""
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


@dataclass
class ResolvedModel:
    spec: str
    """What the user typed."""
    source: str
    """"preset", "local", "gguf" or "hub"."""
    path: str
    """Folder or hub id that `from_pretrained` loads."""
    gguf_file: str | None = None
    preset: presets.Preset | None = None


def cache_dir() -> Path:
    return Path(os.environ.get("BACKPROPAGATE_CACHE_DIR", "~/.cache/backpropagate")).expanduser()


def resolve_model(spec: str) -> ResolvedModel:
    """Work out where a spec's weights come from, without loading anything."""
    spec = str(spec).strip()
    local = Path(spec).expanduser()
    if local.is_file() and local.suffix == ".gguf":
        return ResolvedModel(spec, "gguf", str(local.parent), local.name)
    if local.is_dir():
        if not (local / "config.json").is_file():
            ggufs = sorted(local.glob("*.gguf"))
            if ggufs:
                return ResolvedModel(spec, "gguf", str(local), ggufs[0].name)
            raise BackpropError("INPUT_MODEL_NOT_FOUND",
                                f"{local} has no config.json (not a transformers model folder)")
        return ResolvedModel(spec, "local", str(local))
    preset = presets.get(spec)
    if preset is not None:
        if preset.wheel:
            module, filename = preset.wheel.split(":")
            found = importlib.util.find_spec(module)
            if found and found.submodule_search_locations:
                folder = Path(list(found.submodule_search_locations)[0])
                if (folder / filename).is_file():
                    return ResolvedModel(spec, "preset", str(folder), filename, preset)
        return ResolvedModel(spec, "hub", preset.hub_id, None, preset)
    if _HUB_ID.match(spec) and not spec.startswith(("/", ".", "~")):
        return ResolvedModel(spec, "hub", spec)
    names = ", ".join(p.name for p in presets.PRESETS)
    raise BackpropError("INPUT_MODEL_NOT_FOUND",
                        f"{spec!r} is not a preset ({names}), an existing path or a hub id like org/name")


def materialize(resolved: ResolvedModel) -> str:
    """A folder or hub id that loads fast: GGUF sources become a cached safetensors folder."""
    if resolved.gguf_file is None:
        return resolved.path
    src = Path(resolved.path) / resolved.gguf_file
    stat = src.stat()
    target = cache_dir() / "models" / f"{src.stem}-{stat.st_size}"
    if (target / "config.json").is_file():
        return str(target)
    _convert_gguf(src, target)
    return str(target)


def _convert_gguf(src: Path, target: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    loaded = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name,
                                                  dtype=torch.float32)
    # A gguf-loaded model refuses save_pretrained; copy its weights into a plain model.
    config = AutoConfig.for_model(**{k: v for k, v in loaded.config.to_dict().items()
                                     if k != "quantization_config"})
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), strict=False)
    plain.tie_weights()
    plain.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(partial, target)


def _load_error(spec: str, err: Exception) -> BackpropError:
    return BackpropError(
        "INPUT_MODEL_NOT_FOUND", f"could not load {spec!r}: {type(err).__name__}: {err}",
        hint="Check the id or path. Hub ids need network access (and a token for gated models); "
             "offline, use a preset such as smollm2-135m or a local folder.")


TOKENIZERS_KEPT = 4
_kept_tokenizers: dict[tuple, object] | None = None
"""Loaded tokenizers by (spec, trust_remote_code, folder time), once `keep_tokenizers()`
has been called: off by default, because a training run loads its tokenizer once."""


def keep_tokenizers() -> None:
    """Reuse loaded tokenizers in this process (the engine helper answers many plans and
    reports for the same few models; loading one takes about a second)."""
    global _kept_tokenizers
    if _kept_tokenizers is None:
        _kept_tokenizers = {}


def load_tokenizer(spec: str, trust_remote_code: bool = False):
    """The tokenizer for a spec, with a pad token set (training batches need one)."""
    folder = Path(spec).expanduser()
    key = (spec, trust_remote_code, folder.stat().st_mtime_ns if folder.exists() else 0)
    if _kept_tokenizers is not None and key in _kept_tokenizers:
        return _kept_tokenizers[key]
    from transformers import AutoTokenizer

    resolved = resolve_model(spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(materialize(resolved),
                                                  trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise _load_error(spec, err) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if _kept_tokenizers is not None:
        while len(_kept_tokenizers) >= TOKENIZERS_KEPT:
            _kept_tokenizers.pop(next(iter(_kept_tokenizers)))
        _kept_tokenizers[key] = tokenizer
    return tokenizer


def load_model(spec: str, *, dtype=None, load_in_4bit: bool = False,
               trust_remote_code: bool = False, device_map=None):
    """The base causal LM for a spec, on CPU unless device_map says otherwise."""
    import torch
    from transformers import AutoModelForCausalLM

    resolved = resolve_model(spec)
    kwargs: dict = {"dtype": dtype or torch.float32, "trust_remote_code": trust_remote_code}
    if load_in_4bit:
        kwargs["quantization_config"] = _four_bit_config()
        kwargs["device_map"] = device_map or {"": 0}
    elif device_map is not None:
        kwargs["device_map"] = device_map
    try:
        return AutoModelForCausalLM.from_pretrained(materialize(resolved), **kwargs)
    except (OSError, ValueError, pickle.UnpicklingError) as err:
        # UnpicklingError: .bin weights that would run code when unpickled (torch loads
        # weights_only); such files are refused, never executed.
        raise _load_error(spec, err) from None


def _four_bit_config():
    import torch
    from transformers import BitsAndBytesConfig

    if not torch.cuda.is_available():
        raise BackpropError("CONFIG_GPU_REQUIRED", "4-bit loading (QLoRA) needs a CUDA GPU; none was found")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise BackpropError("DEP_MISSING", "4-bit loading needs the bitsandbytes package",
                            hint="pip install bitsandbytes")
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_use_double_quant=True)


def add_lora(model, r: int, alpha: int, dropout: float, targets: list[str] | None = None):
    """Wrap a base model with a fresh LoRA adapter (peft)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if getattr(model, "is_loaded_in_4bit", False):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                        # peft's "all-linear": every Linear/Conv1D of the decoder, never the LM head.
                        target_modules=targets or "all-linear",
                        bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def unsloth_targets(model) -> list[str]:
    """UNSLOTH_TARGETS under the names this model uses: a Phi-3 model has no q_proj or
    gate_proj, so the plain list would leave its attention and gate/up layers without LoRA."""
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    return [t for t in UNSLOTH_TARGETS + _FUSED_TARGETS if t in names]


def base_model_of(adapter_dir: Path) -> str:
    """The base model spec an adapter folder was trained on."""
    import json

    meta = Path(adapter_dir) / "backpropagate.json"
    if meta.is_file():
        return json.loads(meta.read_text())["model"]
    cfg = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    return cfg["base_model_name_or_path"]
