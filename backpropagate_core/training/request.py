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
from backpropagate_core.training.run_config import RunConfig, build_config


def create_run(store: RunStore, model: str | None, data: str | Path, *, name: str | None = None,
               overrides: dict | None = None, campaign: dict | None = None, fresh: bool = False,
               run_id: str | None = None) -> Run:
    """A queued run, validated. `campaign` (num_runs, steps_per_run, samples_per_run, ...)
    makes it a multi-run campaign; `fresh` and `run_id` as in `multirun.open_campaign`."""
    config = checked_config(model, data, name, overrides)
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
