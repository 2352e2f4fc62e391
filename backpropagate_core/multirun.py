"""Multi-run campaigns: several LoRA training runs over successive chunks of a dataset,
one adapter carried (and, in SLAO mode, merged) across them, with forgetting measured.

    result = run_campaign(build_config("smollm2-135m", "data.jsonl"), num_runs=3,
                          steps_per_run=50, samples_per_run=200)
    result.forgetting       # run × chunk validation loss
    result.adapter_path     # the merged adapter: what export and chat use

Run i trains on chunk i (the next `samples_per_run` examples, in file order) minus a
held-out validation slice that is never trained on. After each run the adapter is merged
(`merge.slao_merge`) or, in `sequential` mode, simply kept; then the current adapter is
evaluated on the validation slice of every chunk seen so far, giving one row of the
forgetting matrix. A campaign is one run in the store (kind "multi_run"); its Step
events count steps across runs, so the loss curve is continuous.

After each run `<run_dir>/campaign/state.json` is replaced atomically; it names the
merged adapter and the run's own adapter (safetensors files beside it). `resume=True`
continues at the first unfinished run. Run i is seeded from (seed, i), so a resumed
campaign ends with the same merged weights as one that never stopped.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from backpropagate_core import events as ev
from backpropagate_core import logs
from backpropagate_core.config import describe_validation
from backpropagate_core.errors import BackpropError
from backpropagate_core.runs import Run, RunStore
from backpropagate_core.train import (ADAPTER_DIR, CANCEL_FLAG, CHECKPOINTS_DIR, RunConfig,
                                      TrainResult, _classify, _stop_on_signals)

_log = logs.get_logger(__name__)
KIND = "multi_run"
OPTIONS = ("schedule", "lambda_c", "replay_fraction", "val_per_chunk", "run_id", "resume",
           "fresh", "name")
"""Keyword arguments of `run_campaign` besides the config and the three sizes."""


class CampaignSettings(BaseModel):
    """How a campaign splits its data and carries the adapter between runs."""

    num_runs: int = Field(5, ge=1, description="Training runs; run i trains on chunk i of the data.")
    steps_per_run: int = Field(100, ge=1, description="Optimizer steps in each run.")
    samples_per_run: int = Field(1000, ge=2, description="Examples per chunk, its validation slice included.")
    merge_mode: Literal["slao", "sequential"] = Field(
        "slao", description="slao merges adapters between runs; sequential keeps training one adapter.")
    schedule: Literal["inv_sqrt", "inv", "constant"] = Field(
        "inv_sqrt", description="SLAO merge step λ(i): 1/√i, 1/i or the constant lambda_c.")
    lambda_c: float = Field(0.5, gt=0, le=1, description="λ of the constant schedule.")
    replay_fraction: float = Field(
        0.0, ge=0, lt=1, description="Extra training examples replayed from earlier chunks, as a share of the run's own.")
    val_per_chunk: int | None = Field(
        None, ge=1, description="Validation examples held out of each chunk; None takes 10% (at least 1).")

    @property
    def val_size(self) -> int:
        return self.val_per_chunk or max(1, self.samples_per_run // 10)


def campaign_settings(**values: Any) -> CampaignSettings:
    """Validated settings; every problem (including a chunk with no room left to train
    on after its validation slice) is reported in one CONFIG_INVALID."""
    try:
        settings = CampaignSettings(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as err:
        raise BackpropError("CONFIG_INVALID", describe_validation(err)) from None
    if settings.samples_per_run - settings.val_size < 1:
        raise BackpropError(
            "CONFIG_INVALID",
            f"{settings.samples_per_run} samples per run leave no room for training after "
            f"{settings.val_size} validation examples per chunk",
            hint="Raise --samples or lower --val-per-chunk.")
    return settings


# ---- events -------------------------------------------------------------------------

@dataclass
class CampaignRunStarted(ev.Event):
    run_index: int
    """1-based index of the run within the campaign."""
    num_runs: int
    first_step: int
    """Campaign steps done before this run: where its part of the loss curve begins."""
    train_examples: int
    replay_examples: int = 0


@dataclass
class MergeDone(ev.Event):
    run_index: int
    step: int
    """Campaign step at which the merge happened (a merge point on the loss curve)."""
    mode: str
    """"slao" or "sequential" (sequential keeps the run's adapter as it is)."""
    lam: float | None = None
    """λ(i) used for B; None in sequential mode."""


@dataclass
class ForgettingMeasured(ev.Event):
    run_index: int
    losses: list
    """Validation loss on chunks 1..run_index with the adapter after this run."""
    avg_forgetting: float | None = None


for _name, _cls in (("campaign_run_started", CampaignRunStarted), ("merge", MergeDone),
                    ("forgetting", ForgettingMeasured)):
    ev.register_event(_name, _cls)


@dataclass
class CampaignResult(TrainResult):
    forgetting: list = field(default_factory=list)
    """Row r: validation loss on chunks 1..r+1 after run r+1; None for chunks not yet seen."""
    avg_forgetting: float | None = None
    final_val_loss: list = field(default_factory=list)
    """Validation loss on every chunk with the final adapter."""


def average_forgetting(matrix: list[list[float | None]]) -> float | None:
    """Mean over chunks j before the latest run of (loss on j now − loss on j right after
    run j trained on it); None until a second run has been measured."""
    if len(matrix) < 2:
        return None
    now = matrix[-1]
    diffs = [now[j] - matrix[j][j] for j in range(len(matrix) - 1)
             if now[j] is not None and matrix[j][j] is not None]
    return sum(diffs) / len(diffs) if diffs else None


# ---- starting, finding and resuming campaigns ----------------------------------------

def run_campaign(config: RunConfig, num_runs: int = 5, steps_per_run: int = 100,
                 samples_per_run: int = 1000, *, merge_mode: str = "slao",
                 schedule: str = "inv_sqrt", lambda_c: float = 0.5, replay_fraction: float = 0.0,
                 val_per_chunk: int | None = None, run_id: str | None = None,
                 store: RunStore | None = None, sink: ev.Sink | None = None,
                 resume: bool = False, fresh: bool = False, name: str | None = None) -> CampaignResult:
    """Run a campaign in this process. `resume=True` continues `run_id` (or the unfinished
    campaign with these settings); `fresh=True` starts over even when one exists."""
    store = store or RunStore()
    settings = campaign_settings(num_runs=num_runs, steps_per_run=steps_per_run,
                                 samples_per_run=samples_per_run, merge_mode=merge_mode,
                                 schedule=schedule, lambda_c=lambda_c,
                                 replay_fraction=replay_fraction, val_per_chunk=val_per_chunk)
    if resume:
        run = find_resumable(store, config, settings, run_id)
    else:
        run = open_campaign(store, config, settings, run_id=run_id, fresh=fresh, name=name)
    return execute_campaign(run.id, store, extra_sinks=[sink], resume=resume)


def stored_config(config: RunConfig, settings: CampaignSettings) -> dict:
    """What the store keeps as the campaign's config: the run config plus the campaign."""
    data = str(Path(config.data).expanduser().resolve())
    return json.loads(json.dumps({**config.model_dump(mode="json"), "data": data,
                                  "campaign": settings.model_dump(mode="json")}))


def unfinished(run: Run) -> bool:
    """Whether the campaign is queued or running, or trained some runs but not its last."""
    state = _state_of(run)
    return run.active or (state is not None and not state.done)


def open_campaign(store: RunStore, config: RunConfig, settings: CampaignSettings, *,
                  run_id: str | None = None, fresh: bool = False, name: str | None = None) -> Run:
    """A queued campaign run ready to execute: new, or `run_id` started over.

    Raises STATE_CAMPAIGN_UNFINISHED when `run_id`, or a campaign with the same model,
    data and settings, stopped part-way, unless `fresh` is set.
    """
    from backpropagate_core.campaign import STATE_DIR

    wanted = stored_config(config, settings)
    store.reap_dead()
    existing = _get_or_none(store, run_id) if run_id else None
    if existing is not None and (existing.kind != KIND or existing.active):
        raise BackpropError("STATE_RUN_ACTIVE" if existing.active else "CONFIG_INVALID",
                            f"run {existing.id[:8]} is a {existing.status} {existing.kind} run",
                            hint="Pick another --run-id, or leave it out for a new one.")
    if not fresh:
        same = [existing] if existing else [r for r in store.list(kind=KIND) if r.config == wanted]
        for run in same:
            if unfinished(run):
                raise _unfinished_error(run)
    if existing is None:
        return store.create_run(config=wanted, model=config.model, dataset=wanted["data"],
                                name=name, kind=KIND, run_id=run_id)
    for leftover in (STATE_DIR, ADAPTER_DIR, CHECKPOINTS_DIR):
        shutil.rmtree(existing.run_dir / leftover, ignore_errors=True)
    (existing.run_dir / "config.json").write_text(json.dumps(wanted, indent=2))
    store.update(existing.id, config=wanted, status="queued", summary={}, name=name or existing.name)
    return store.get(existing.id)


def find_resumable(store: RunStore, config: RunConfig | None, settings: CampaignSettings | None,
                   run_id: str | None) -> Run:
    """The campaign to resume: `run_id`, or the newest unfinished one with these settings."""
    store.reap_dead()
    if run_id:
        run = store.get(run_id)
        if run.kind != KIND:
            raise BackpropError("STATE_RUN_NOT_FOUND", f"run {run.id[:8]} is a {run.kind} run, not a multi-run campaign",
                                hint="Resume training runs with `backprop resume RUN`.")
    else:
        wanted = stored_config(config, settings)
        found = [r for r in store.list(kind=KIND) if r.config == wanted and unfinished(r)]
        if not found:
            raise BackpropError("STATE_RUN_NOT_FOUND", "no unfinished campaign with these settings",
                                hint="List campaigns with `backprop list-runs` and pass the id to --resume.")
        run = found[0]
    if run.active:
        raise BackpropError("STATE_RUN_ACTIVE", f"campaign {run.id[:8]} is {run.status}")
    return run


def _state_of(run: Run):
    from backpropagate_core.campaign import read_state  # imports this module: load it late

    return read_state(run.run_dir)


def _get_or_none(store: RunStore, run_id: str) -> Run | None:
    try:
        run = store.get(run_id)
    except BackpropError:
        return None
    return run if run.id == run_id else None


def _unfinished_error(run: Run) -> BackpropError:
    state = _state_of(run)
    done = state.completed if state else 0
    total = run.config.get("campaign", {}).get("num_runs", "?")
    return BackpropError(
        "STATE_CAMPAIGN_UNFINISHED",
        f"campaign {run.id[:8]} ({run.status}) stopped after {done} of {total} runs",
        hint=f"Continue it with `backprop multi-run --resume {run.id[:8]}`, "
             "or start a new campaign with --fresh (the unfinished one is kept).")


# ---- executing ------------------------------------------------------------------------

def execute_campaign(run_id: str, store: RunStore, *, extra_sinks: list | tuple = (),
                     resume: bool = False) -> CampaignResult:
    """Train the campaign recorded in the store; the body of `backprop multi-run` and of
    the worker. Ends in exactly one of Finished, Cancelled or Failed in the store."""
    run = store.get(run_id)
    if run.kind != KIND:
        raise BackpropError("STATE_RUN_NOT_FOUND", f"run {run.id[:8]} is not a multi-run campaign")
    state = _state_of(run)
    if not resume and state is not None and not state.done:
        raise _unfinished_error(run)
    config = RunConfig.model_validate(run.config)
    settings = CampaignSettings.model_validate(run.config["campaign"])
    sink = ev.fan_out(store.sink(), ev.JsonlSink(run.run_dir / "events.jsonl"), logs.log_event,
                      *extra_sinks)
    store.claim(run.id)
    (run.run_dir / CANCEL_FLAG).unlink(missing_ok=True)
    with logs.bind_run(run.id, run.run_dir / logs.RUN_LOG):
        try:
            with _stop_on_signals(run.run_dir / CANCEL_FLAG):
                from backpropagate_core.campaign import Campaign

                return Campaign(config, settings, run, store, sink).run(resume)
        except BackpropError as err:
            sink(ev.Failed(run.id, code=err.code, message=err.message, hint=err.hint))
            raise
        except Exception as err:  # noqa: BLE001 - the worker's outer edge: record a coded failure
            coded = _classify(err, run.run_dir)
            sink(ev.Failed(run.id, code=coded.code, message=coded.message, hint=coded.hint))
            _log.debug("traceback of the failure above", exc_info=err)
            raise coded from err
