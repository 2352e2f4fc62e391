"""Settings from defaults, `.env`, `BACKPROPAGATE_*` env vars and explicit arguments.

Nested sections use `__` in env names: `BACKPROPAGATE_LORA__R=32`,
`BACKPROPAGATE_TRAINING__LEARNING_RATE=1e-4`, `BACKPROPAGATE_UI__PORT=7870`.
Fields left as None are chosen at run time from the hardware and the dataset
(see `defaults.py`), and the reason for each choice is printed and stored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from backpropagate_core.errors import BackpropError

DEFAULT_MODEL = "smollm2-135m"


class LoraSettings(BaseModel):
    r: int = Field(16, ge=1, le=1024, description="LoRA rank: size of the low-rank update.")
    alpha: int = Field(32, ge=1, description="LoRA scaling numerator; the update is scaled by alpha/r.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA input during training.")
    target_modules: list[str] | None = Field(
        None, description="Module names to adapt; None adapts every linear layer of the decoder (peft's all-linear).")


class TrainingSettings(BaseModel):
    method: Literal["auto", "sft", "dpo", "orpo"] = Field(
        "auto", description="sft learns the answers; dpo and orpo learn which of two answers is preferred "
                            "(preference datasets); auto: dpo for a preference dataset, else sft.")
    beta: float | None = Field(None, gt=0, le=10, description="DPO: how far the model may move from its "
                               "reference; ORPO: weight of the preference term. None picks 0.1.")
    sft_weight: float | None = Field(None, ge=0, le=10, description="DPO: weight of a loss on the chosen "
                                     "answers next to the preference loss, so the model gives them and not only "
                                     "ranks them higher. None picks 1.0; 0 is plain DPO.")
    steps: int | None = Field(None, ge=1, description="Optimizer steps; None derives it from epochs and dataset size.")
    epochs: float | None = Field(None, gt=0, description="Passes over the data when steps is None.")
    learning_rate: float | None = Field(None, gt=0, lt=1, description="Peak learning rate; None picks one for LoRA rank and model size.")
    batch_size: int | None = Field(None, ge=1, description="Examples per micro-batch, exactly; None fills each micro-batch to batch_tokens instead.")
    batch_tokens: int | None = Field(None, ge=16, description="When batch_size is empty: tokens per micro-batch, examples packed up to it; None picks it from the hardware.")
    grad_accum: int | None = Field(None, ge=1, description="Micro-batches per optimizer step.")
    max_seq_len: int | None = Field(None, ge=16, le=131072, description="Tokens per example; None covers the 99th percentile of the data.")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Fraction of steps spent warming up the learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    lr_scheduler: str = Field("cosine", description="transformers scheduler name (cosine, linear, constant, ...).")
    seed: int = Field(42, description="Seed for data order and LoRA initialisation.")
    save_steps: int | None = Field(None, ge=1, description="Checkpoint every N steps; None picks ~5 checkpoints per run.")
    save_total_limit: int = Field(2, ge=1, description="How many checkpoints to keep on disk.")
    logging_steps: int = Field(1, ge=1, description="Emit a step event every N steps.")
    val_fraction: float = Field(0.1, ge=0, lt=0.5, description="Share of examples held out for validation.")
    eval_steps: int | None = Field(None, ge=1, description="Evaluate every N steps; None evaluates about ten times a run.")
    eval_samples: int = Field(16, ge=0, le=256, description="Held-out prompts answered (greedy) and scored at each evaluation; 0 scores the loss only.")
    early_stopping: bool = Field(True, description="Stop when the held-out score has not improved for `patience` evaluations, and keep the best adapter as the result.")
    patience: int = Field(3, ge=1, description="Evaluations without improvement before early stopping ends the run.")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field("auto", description="Training precision; auto uses bf16 where the device supports it.")
    load_in_4bit: bool = Field(False, description="QLoRA: load the base model in 4-bit (CUDA + bitsandbytes only).")
    gradient_checkpointing: bool | None = Field(None, description="Trade compute for memory; None turns it on for GPUs that need it.")
    skip_bad_lines: bool = Field(False, description="Drop malformed dataset lines and report them instead of failing.")
    backend: Literal["auto", "transformers", "unsloth"] = Field(
        "auto", description="Training backend; auto uses Unsloth where it is installed, works and is faster.")
    packing: bool = Field(True, description="Padding-free batches: each micro-batch's examples joined in one row, attention kept within each example.")
    oom_recovery: bool = Field(True, description="On a CUDA out-of-memory error, halve the batch, double accumulation and retry (up to 3 times).")
    report_to: str = Field("auto", description="Experiment trackers: auto, none, or a comma list of tensorboard, wandb, mlflow.")
    trust_remote_code: bool = Field(False, description="Allow model repos to run their own Python code (off unless you trust the repo).")


class GpuGuardSettings(BaseModel):
    """Temperature thresholds of the GPU guard (degrees Celsius)."""

    warn_c: float = Field(80.0, description="Log a warning at or above this temperature.")
    pause_c: float = Field(90.0, description="Pause training at or above this temperature until it cools.")
    resume_c: float = Field(80.0, description="A paused run continues once the GPU is below this temperature.")
    abort_c: float = Field(95.0, description="Stop the run (RUNTIME_GPU_OVERHEAT) at or above this temperature.")
    interval_s: float = Field(5.0, gt=0, description="Seconds between hardware samples.")
    max_pause_s: float = Field(1800.0, gt=0, description="Abort if a pause lasts longer than this without cooling.")

    @model_validator(mode="after")
    def _ordered(self) -> "GpuGuardSettings":
        if not self.resume_c <= self.pause_c <= self.abort_c or self.warn_c > self.pause_c:
            raise ValueError("need warn_c <= pause_c <= abort_c and resume_c <= pause_c")
        return self


class UISettings(BaseModel):
    host: str = Field("127.0.0.1", description="Address the UI binds to (loopback by default).")
    port: int = Field(7862, ge=1, le=65535, description="Port of the UI (pages and websocket).")
    output_dir: Path = Field(Path("~/.backpropagate/ui-outputs"), description="Every file the UI writes lives under this folder.")
    max_upload_mb: int = Field(200, ge=1, description="Largest dataset file the UI accepts.")


class SecuritySettings(BaseModel):
    require_auth_for_share: bool = Field(True, description="Refuse --share without --auth.")
    jwt_secret: str | None = Field(
        None, repr=False, min_length=32,
        description="Key that signs UI session cookies (32+ characters); None makes a random one per `backprop ui` start.")
    session_hours: float = Field(12.0, gt=0, le=24 * 30, description="How long a UI login lasts.")
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Extra Host names the UI answers to (e.g. a LAN name like box.local:7862); loopback and the tunnel are added.")
    engine_memory_gb: float | None = Field(
        None, ge=0,
        description="Address-space limit (GiB) of the engine processes the UI starts (helper, training and export "
                    "workers); None: 3/4 of the machine's memory, at least 8; 0: no limit. Linux only, and never "
                    "set where a GPU driver is present.")


ENV_ONLY = {"security": None, "training": {"trust_remote_code"}, "llama_cpp_dir": None}
"""Settings a `.env` file may not set (None: the whole section or field): a `.env` lies in
whatever folder the command runs in, a cloned repository's among them, and could otherwise
turn the login off, forge session cookies, run a model repo's code or name a converter
script of its own choosing. They come from real environment variables or flags only."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="BACKPROPAGATE_", env_nested_delimiter="__", env_file=".env",
        extra="ignore", validate_default=True)

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        return init_settings, env_settings, _WithoutEnvOnly(settings_cls, dotenv_settings), file_secret_settings

    home: Path = Field(Path("~/.backpropagate"), description="Run store and run folders live here.")
    model: str = Field(DEFAULT_MODEL, description="Default model preset, local path or hub id.")
    lora: LoraSettings = LoraSettings()
    training: TrainingSettings = TrainingSettings()
    ui: UISettings = UISettings()
    gpu: GpuGuardSettings = GpuGuardSettings()
    security: SecuritySettings = SecuritySettings()
    ollama_host: str = Field("http://127.0.0.1:11434", description="Ollama server used for registration.")
    llama_cpp_dir: Path | None = Field(
        None, description="A llama.cpp checkout: GGUF export runs its convert_hf_to_gguf.py for architectures "
                          "our own writer does not convert; None refuses them (EXPORT_ARCH_UNSUPPORTED).")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log verbosity.")
    log_json: bool | Literal["auto"] = Field(
        "auto", description="JSON log lines: auto (when stderr is not a terminal), true or false.")
    log_file: Path | None = Field(None, description="Also write JSON log lines to this file, rotated at 10 MB.")

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value):
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("llama_cpp_dir", mode="before")
    @classmethod
    def _blank_is_none(cls, value):
        # An exported-but-empty variable would otherwise name the current folder.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("log_json", mode="before")
    @classmethod
    def _auto_or_bool(cls, value):
        if isinstance(value, str) and value.strip().lower() not in (
                "auto", "1", "0", "true", "false", "yes", "no", "on", "off"):
            raise ValueError("use auto, true or false")
        return value.strip().lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _expand(self) -> "Settings":
        self.home = Path(self.home).expanduser()
        self.ui.output_dir = Path(self.ui.output_dir).expanduser()
        if self.llama_cpp_dir is not None:
            self.llama_cpp_dir = Path(self.llama_cpp_dir).expanduser()
        return self


class _WithoutEnvOnly(PydanticBaseSettingsSource):
    """The `.env` file's values, less the `ENV_ONLY` settings (logged once as ignored)."""

    warned = False

    def __init__(self, settings_cls, dotenv: PydanticBaseSettingsSource) -> None:
        super().__init__(settings_cls)
        self.dotenv = dotenv

    def get_field_value(self, field, field_name):  # unused: __call__ is overridden
        return None, field_name, False

    def __call__(self) -> dict:
        values = dict(self.dotenv())
        dropped = []
        for section, keys in ENV_ONLY.items():
            if section not in values:
                continue
            if keys is None:
                dropped += [f"{section}.*" if isinstance(values[section], dict) else section]
                values.pop(section)
            elif isinstance(values[section], dict):
                dropped += [f"{section}.{k}" for k in keys if k in values[section]]
                values[section] = {k: v for k, v in values[section].items() if k not in keys}
        if dropped and not _WithoutEnvOnly.warned:
            _WithoutEnvOnly.warned = True
            import logging

            logging.getLogger("backpropagate").warning(
                "ignored %s from .env: security settings come from real environment variables only",
                ", ".join(dropped))
        return values


def describe_validation(err: ValidationError) -> str:
    """All problems in one message, one per line, with the env var that sets each."""
    lines = []
    for problem in err.errors():
        where = ".".join(str(p) for p in problem["loc"]) or "value"
        env = "BACKPROPAGATE_" + "__".join(str(p).upper() for p in problem["loc"])
        # Secret values are never echoed back, not even invalid ones.
        got = "***" if any(w in where.lower() for w in ("secret", "password", "token")) else repr(problem.get("input"))
        lines.append(f"{where} ({env}): {problem['msg']} (got {got})")
    return "; ".join(lines)


def load_settings(**overrides) -> Settings:
    """Settings from env and `.env`, with explicit keyword overrides on top.

    Nested overrides are dicts: `load_settings(lora={"r": 8})`. Every invalid value is
    reported in one CONFIG_INVALID error.
    """
    try:
        base = Settings()
        if not overrides:
            return base
        merged = base.model_dump()
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key].update(value)
            else:
                merged[key] = value
        return Settings.model_validate(merged)
    except ValidationError as err:
        raise BackpropError("CONFIG_INVALID", describe_validation(err)) from None
