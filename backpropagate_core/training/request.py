"""`create_run`: the one way a training run comes to exist.

The CLI, the worker launcher, the Python API and the UI all call it. Everything is
checked before a row is written, so a bad setting, a missing dataset, an unknown model or
a campaign too big for its data is refused with one coded error and leaves nothing behind.
"""

from __future__ import annotations

from pathlib import Path

from backpropagate_core.errors import BackpropError
from backpropagate_core.runs.store import Run, RunStore
from backpropagate_core.training import multirun
from backpropagate_core.training.campaign_state import campaign_settings
from backpropagate_core.config import LoraSettings
from backpropagate_core.runs.layout import RunDir
from backpropagate_core.training.preference import PREFERENCE_METHODS
from backpropagate_core.training.run_config import RunConfig, StartFrom, build_config


def create_run(store: RunStore, model: str | None, data: str | Path, *, name: str | None = None,
               overrides: dict | None = None, campaign: dict | None = None, fresh: bool = False,
               run_id: str | None = None) -> Run:
    """A queued run, validated. `campaign` (num_runs, steps_per_run, samples_per_run, ...)
    makes it a multi-run campaign; `fresh` and `run_id` as in `multirun.open_campaign`."""
    overrides = dict(overrides or {})
    start = overrides.pop("from_run", None)
    config = checked_config(model, data, name, overrides)
    if start is not None:
        config = _start_from(store, config, start, model, overrides)
    if config.training.method in PREFERENCE_METHODS or campaign is not None:
        _check_method(config, campaign is not None)
    if campaign is None:
        return store.create_run(config=config.model_dump(mode="json"), model=config.model,
                                dataset=config.data, name=name, run_id=run_id)
    n_examples = multirun.count_examples(config)
    settings = campaign_settings(n_examples=n_examples, **campaign)
    return multirun.open_campaign(store, config, settings, run_id=run_id, fresh=fresh, name=name,
                                  n_examples=n_examples)


def checked_config(model: str | None, data: str | Path, name: str | None = None,
                   overrides: dict | None = None) -> RunConfig:
    """The run config with its dataset path made absolute; raises if the dataset or the
    model cannot be found."""
    from backpropagate_core.model.loader import resolve_model

    config = build_config(model, str(data), name, **(overrides or {}))
    path = Path(config.data).expanduser()
    if not path.exists():
        raise BackpropError("INPUT_DATASET_NOT_FOUND", f"{config.data} does not exist",
                            hint="Check the path; `backprop data report PATH` checks a dataset.")
    resolve_model(config.model)
    config.data = str(path.resolve())
    return config


def _start_from(store: RunStore, config: RunConfig, run_ref: str, model: str | None,
                overrides: dict) -> RunConfig:
    """The config of a run that starts from an earlier run's adapter: that run's model and
    LoRA shape (the weights only fit those), checked before anything is written."""
    parent = store.get(run_ref)
    adapter = RunDir(parent.run_dir).adapter
    if not (adapter / "adapter_config.json").is_file():
        raise BackpropError("STATE_CHECKPOINT_INVALID", f"run {parent.id} has no finished adapter to start from",
                            hint="Pick a completed training run (`backprop list-runs`).")
    parent_config = RunConfig.model_validate(parent.config)
    if model and model != parent_config.model:
        raise BackpropError("CONFIG_INVALID", f"run {parent.id} trained {parent_config.model}, not {model}",
                            hint="Leave out the model: a run started from another one uses its model.")
    lora_keys = set(LoraSettings.model_fields)
    if any(k in lora_keys for k in overrides) or "lora" in overrides:
        raise BackpropError("CONFIG_INVALID", "LoRA settings cannot change when starting from another run",
                            hint="The earlier run's adapter only fits its own rank and target modules.")
    return config.model_copy(update={"model": parent_config.model, "lora": parent_config.lora,
                                     "start_from": StartFrom(run=parent.id, adapter=str(adapter))})


def _check_method(config: RunConfig, campaign: bool) -> None:
    """DPO and ORPO need answer pairs, and campaigns train SFT only; said before a run exists."""
    from backpropagate_core.data import dataset as data_mod
    from backpropagate_core.training.preference import method_for

    loaded = data_mod.load(config.data, skip_bad_lines=True)
    method, _ = method_for(config.training.method, loaded.format)
    if campaign and method != "sft":
        raise BackpropError("CONFIG_INVALID", "multi-run (SLAO) campaigns train with SFT only",
                            hint="Merging preference-trained adapters between runs is not measured yet; "
                                 "train DPO or ORPO as a single run (`backprop train --method dpo`).")
