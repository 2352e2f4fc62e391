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
from pathlib import Path

from backpropagate_core.errors import BackpropError
from backpropagate_core.runs import events as ev
from backpropagate_core.runs.layout import RunDir
from backpropagate_core.runs.store import Run, RunStore
from backpropagate_core.training.campaign import Campaign
from backpropagate_core.training.campaign_state import (KIND, CampaignResult, CampaignSettings,
                                                        campaign_settings, check_enough, read_state)
from backpropagate_core.training.run_config import RunConfig
from backpropagate_core.training.session import run_session


# ---- starting, finding and resuming campaigns ----------------------------------------

def run_campaign(config: RunConfig, num_runs: int = 5, steps_per_run: int = 100,
                 samples_per_run: int | None = None, *, merge_mode: str = "slao",
                 schedule: str = "inv_sqrt", lambda_c: float = 0.5, replay_fraction: float = 0.0,
                 val_per_chunk: int | None = None, run_id: str | None = None,
                 store: RunStore | None = None, sink: ev.Sink | None = None,
                 resume: bool = False, fresh: bool = False, name: str | None = None) -> CampaignResult:
    """Run a campaign in this process. `resume=True` continues `run_id` (or the unfinished
    campaign with these settings); `fresh=True` starts over even when one exists."""
    store = store or RunStore()
    settings = campaign_settings(n_examples=None if samples_per_run else count_examples(config), num_runs=num_runs, steps_per_run=steps_per_run,
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
                  run_id: str | None = None, fresh: bool = False, name: str | None = None,
                  n_examples: int | None = None) -> Run:
    """A queued campaign run ready to execute: new, or `run_id` started over.

    Raises STATE_CAMPAIGN_UNFINISHED when `run_id`, or a campaign with the same model,
    data and settings, stopped part-way, unless `fresh` is set; CONFIG_INVALID when the
    dataset (`n_examples`, counted here when not given) is too small for the campaign.
    """
    wanted = stored_config(config, settings)
    check_enough(settings, count_examples(config) if n_examples is None else n_examples)
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
    files = RunDir(existing.run_dir)
    for leftover in (files.campaign, files.adapter, files.checkpoints):
        shutil.rmtree(leftover, ignore_errors=True)
    files.config.write_text(json.dumps(wanted, indent=2))
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
    return read_state(run.run_dir)


def count_examples(config: RunConfig) -> int:
    """Examples the dataset holds (read without a tokenizer), to refuse a campaign too big
    for its data before it is recorded."""
    from backpropagate_core.data.dataset import load

    return len(load(config.data, skip_bad_lines=config.training.skip_bad_lines).examples)


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
    with run_session(store, run, extra_sinks) as sink:
        return Campaign(config, settings, run, store, sink).run(resume)


def execute(run_id: str, store: RunStore, *, extra_sinks: list | tuple = (), resume: bool = False):
    """Train a stored run of either kind: a single run or a campaign of runs."""
    from backpropagate_core.training.pipeline import execute_run

    if store.get(run_id).kind == KIND:
        return execute_campaign(run_id, store, extra_sinks=extra_sinks, resume=resume)
    return execute_run(run_id, store, extra_sinks=extra_sinks, resume=resume)
