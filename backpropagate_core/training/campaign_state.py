"""What a multi-run campaign is asked to do and what it has done so far.

`CampaignSettings` says how the data is cut into chunks and how the adapter is carried
between runs. The state is `<run_dir>/campaign/state.json` plus safetensors files beside
it; each file is written under a `.partial` name and renamed when complete, and
state.json is renamed last, so a kill at any moment leaves the previous complete state.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from backpropagate_core import platform_support
from backpropagate_core.config import describe_validation
from backpropagate_core.errors import BackpropError
from backpropagate_core.runs.layout import RunDir
from backpropagate_core.training.pipeline import TrainResult

KIND = "multi_run"
OPTIONS = ("schedule", "lambda_c", "replay_fraction", "val_per_chunk", "run_id", "resume",
           "fresh", "name")
"""Keyword arguments of `multirun.run_campaign` besides the config and the three sizes."""


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


def campaign_settings(n_examples: int | None = None, **values: Any) -> CampaignSettings:
    """Validated settings; every problem (including a chunk with no room left to train
    on after its validation slice) is reported in one CONFIG_INVALID. Without
    samples_per_run, a dataset of `n_examples` is shared out evenly between the runs."""
    if values.get("samples_per_run") is None and n_examples:
        runs = values.get("num_runs") or CampaignSettings.model_fields["num_runs"].default
        values["samples_per_run"] = max(2, n_examples // max(1, runs))
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


STATE_FILE = "state.json"


# ---- campaign state -----------------------------------------------------------------

@dataclass
class CampaignState:
    completed: int = 0
    """Runs trained, merged, measured and committed."""
    forgetting: list = field(default_factory=list)
    """One row per completed run: validation loss per chunk, None for chunks not yet seen."""
    lambdas: list = field(default_factory=list)
    """λ used to merge B after each run (None in sequential mode)."""
    merge_steps: list = field(default_factory=list)
    """Campaign step of each merge point."""
    train_losses: list = field(default_factory=list)
    """Last training loss of each run."""
    merged_file: str | None = None
    """Safetensors file with the merged adapter (the campaign's result so far)."""
    last_file: str | None = None
    """Safetensors file with the last run's own fine-tuned adapter."""
    done: bool = False
    """True once the final adapter is saved."""


def read_state(run_dir: Path) -> CampaignState | None:
    path = RunDir(Path(run_dir)).campaign / STATE_FILE
    return CampaignState(**json.loads(path.read_text())) if path.is_file() else None


def write_state(run_dir: Path, state: CampaignState, merged: dict | None = None,
                last: dict | None = None) -> None:
    """Commit `state` (and, when given, the adapters it names) atomically."""
    folder = RunDir(Path(run_dir)).campaign
    folder.mkdir(parents=True, exist_ok=True)
    if last is not None:
        state.last_file = _save_tensors(folder / f"run-{state.completed}.safetensors", last)
        state.merged_file = state.last_file if merged is last else \
            _save_tensors(folder / f"merged-{state.completed}.safetensors", merged)
    partial = folder / (STATE_FILE + ".partial")
    partial.write_text(json.dumps(asdict(state), indent=2))
    platform_support.replace(partial, folder / STATE_FILE)
    for old in folder.glob("merged-*.safetensors"):  # only the latest merge is needed
        if old.name != state.merged_file:
            old.unlink()


def restore(run_dir: Path) -> tuple[CampaignState, dict | None, dict | None]:
    """The last committed state and its (merged, last run's) adapters; a fresh state if none."""
    from safetensors.torch import load_file

    folder = RunDir(Path(run_dir)).campaign
    for leftover in folder.glob("*.partial"):
        leftover.unlink()
    state = read_state(run_dir)
    if state is None or state.completed == 0:
        return CampaignState(), None, None
    return state, load_file(folder / state.merged_file), load_file(folder / state.last_file)


def _save_tensors(path: Path, tensors: dict) -> str:
    from safetensors.torch import save_file

    partial = path.with_name(path.name + ".partial")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(partial))
    platform_support.replace(partial, path)
    return path.name


# ---- data -----------------------------------------------------------------------------

def run_seed(seed: int, i: int) -> int:
    """The seed of run i (1-based): the campaign seed for run 1, then one more per run."""
    return seed + i - 1


def check_enough(settings: CampaignSettings, n_examples: int) -> None:
    need = settings.num_runs * settings.samples_per_run
    if n_examples < need:
        raise BackpropError(
            "CONFIG_INVALID",
            f"the dataset has {n_examples} examples; {settings.num_runs} runs of "
            f"{settings.samples_per_run} samples need {need}",
            hint="Lower --runs or --samples, or add data.")


def split_chunks(examples: list, settings: CampaignSettings, seed: int) -> list[tuple[list, list]]:
    """(train, validation) per run: chunk k is the k-th block of `samples_per_run`
    examples in file order; `val_size` of them, picked by a seeded shuffle, are held out."""
    size, n_val = settings.samples_per_run, settings.val_size
    out = []
    for k in range(settings.num_runs):
        chunk = examples[k * size:(k + 1) * size]
        held = set(random.Random(seed + k).sample(range(len(chunk)), n_val))
        out.append(([e for j, e in enumerate(chunk) if j not in held],
                    [e for j, e in enumerate(chunk) if j in held]))
    return out


def replay_rows(chunks: list, k: int, fraction: float, seed: int) -> list:
    """round(fraction × chunk k's training examples) drawn from earlier chunks' training
    examples (never their validation slices)."""
    pool = [row for chunk in chunks[:k] for row in chunk.train]
    n = min(len(pool), round(fraction * len(chunks[k].train)))
    return random.Random(seed).sample(pool, n) if n > 0 else []


