"""Which library builds the model for training: transformers + peft, or Unsloth.

Either way the model then trains through `trainer.fit`, so events, checkpoints, the
adapter and every export are the same. `backend="auto"` picks Unsloth only where it is
installed and runs on CUDA, where its Triton kernels are made for the job (no GPU comparison
against our own path has been measured yet: `docs/performance.md`). On CPUs Unsloth runs
stock transformers + peft with bf16 weights and a chunked loss, and our own path measured
1.9x faster there, so auto keeps ours.

Importing Unsloth patches transformers and TRL for the whole process; that is why it
only happens here, in the training process, and only when Unsloth was chosen.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from backpropagate_core.errors import BackpropError

BACKEND_ATTR = "_backpropagate_backend"
"""Set on the model: "unsloth" tells `trainer.fit` to keep Unsloth's own loss and padding."""


@dataclass
class Choice:
    backend: str
    """"transformers" or "unsloth"."""
    reason: str


def installed() -> bool:
    return importlib.util.find_spec("unsloth") is not None


def choose(requested: str, device: str) -> Choice:
    """The backend for this request on this device, with the reason."""
    if requested == "transformers":
        return Choice("transformers", "set by you")
    if requested == "unsloth":
        if not installed():
            raise BackpropError("DEP_MISSING", "backend=unsloth but the unsloth package is not installed",
                                hint="pip install unsloth on a CUDA machine (or `make unsloth` on a CPU one), "
                                     "or use backend=auto")
        return Choice("unsloth", "set by you")
    if not installed():
        return Choice("transformers", "Unsloth is not installed")
    if device != "cuda":
        return Choice("transformers", "on CPUs our own path measured faster than Unsloth's CPU fallback")
    return Choice("unsloth", "Unsloth is installed and has CUDA kernels for this GPU")


def load_model(spec: str, choice: Choice, *, dtype, lora, max_seq_len: int, load_in_4bit: bool,
               gradient_checkpointing: bool, trust_remote_code: bool, seed: int):
    """A peft LoRA model built by the chosen backend."""
    from backpropagate_core.model import loader as model_mod

    if choice.backend == "unsloth":
        try:
            return _unsloth_model(spec, dtype=dtype, lora=lora, max_seq_len=max_seq_len,
                                  load_in_4bit=load_in_4bit, gradient_checkpointing=gradient_checkpointing,
                                  trust_remote_code=trust_remote_code, seed=seed)
        except ImportError as err:
            raise BackpropError("DEP_MISSING", f"unsloth is installed but does not import here: {err}",
                                hint="Use backend=transformers, or reinstall unsloth for this torch/CUDA.") from None
    base = model_mod.load_model(spec, dtype=dtype, load_in_4bit=load_in_4bit,
                                trust_remote_code=trust_remote_code, device_map=_this_gpu())
    _seed(seed)  # the LoRA A matrices start random: the same seed gives the same start
    return model_mod.add_lora(base, lora.r, lora.alpha, lora.dropout, lora.target_modules)


def _this_gpu() -> dict | None:
    """A single-process CUDA run loads straight onto the GPU: no CPU copy of the weights
    first, and Liger's Triton kernels never meet a tensor left behind on the CPU. Under
    `accelerate launch` the model stays where accelerate expects it (FSDP and DeepSpeed
    shard it from there)."""
    import torch

    from backpropagate_core.training import distributed

    if not torch.cuda.is_available() or distributed.world_size() > 1:
        return None
    return {"": 0}


def _seed(seed: int) -> None:
    from transformers import set_seed

    set_seed(seed)


def _unsloth_model(spec: str, *, dtype, lora, max_seq_len: int, load_in_4bit: bool,
                   gradient_checkpointing: bool, trust_remote_code: bool, seed: int):
    from unsloth import FastLanguageModel

    from backpropagate_core.model import loader as model_mod

    path = model_mod.materialize(model_mod.resolve_model(spec))
    model, _tokenizer = FastLanguageModel.from_pretrained(
        path, max_seq_length=max_seq_len, dtype=dtype, load_in_4bit=load_in_4bit,
        trust_remote_code=trust_remote_code)
    peft_model = FastLanguageModel.get_peft_model(
        model, r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, bias="none",
        target_modules=lora.target_modules or model_mod.unsloth_targets(model),
        use_gradient_checkpointing="unsloth" if gradient_checkpointing else False, random_state=seed)
    setattr(peft_model, BACKEND_ATTR, "unsloth")
    return peft_model
