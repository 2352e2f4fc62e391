"""What a training run is asked to do: `RunConfig`, built from env settings plus overrides.

The run folder's config.json is a RunConfig (plus, for a campaign, its settings); it is
everything needed to rebuild the run.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, ValidationError

from backpropagate_core.config import (DEFAULT_MODEL, LoraSettings, TrainingSettings,
                                       describe_validation, load_settings)
from backpropagate_core.errors import BackpropError


class StartFrom(BaseModel):
    """An earlier run whose adapter this run starts from (`--from RUN`)."""

    run: str
    adapter: str
    """The adapter folder loaded at the start (and, for DPO, kept frozen as the reference)."""


class RunConfig(BaseModel):
    """Everything needed to (re)build a run; stored as the run folder's config.json."""

    model: str = Field(DEFAULT_MODEL, description="Preset name, local folder, .gguf file or hub id.")
    data: str = Field(..., description="Dataset file or folder.")
    name: str | None = Field(None, description="Optional human-readable run name.")
    lora: LoraSettings = LoraSettings()
    training: TrainingSettings = TrainingSettings()
    start_from: StartFrom | None = None


_LORA_KEYS = set(LoraSettings.model_fields)
_TRAIN_KEYS = set(TrainingSettings.model_fields)


def build_config(model: str | None, data: str, name: str | None = None,
                 **overrides: Any) -> RunConfig:
    """A RunConfig from env settings plus overrides given flat (`r=8, steps=20`) or nested
    (`lora={"r": 8}`); every invalid or unknown key is reported in one CONFIG_INVALID."""
    settings = load_settings()
    lora = settings.lora.model_dump()
    training = settings.training.model_dump()
    unknown = []
    for key, value in overrides.items():
        if value is None:
            continue
        if key in ("lora", "training") and isinstance(value, dict):
            (lora if key == "lora" else training).update(value)
        elif key in _LORA_KEYS:
            lora[key] = value
        elif key in _TRAIN_KEYS:
            training[key] = value
        else:
            unknown.append(key)
    if unknown:
        raise BackpropError("CONFIG_INVALID", f"unknown setting(s): {', '.join(sorted(unknown))}")
    try:
        return RunConfig(model=model or settings.model, data=str(data), name=name,
                         lora=lora, training=training)
    except ValidationError as err:
        raise BackpropError("CONFIG_INVALID", describe_validation(err)) from None
