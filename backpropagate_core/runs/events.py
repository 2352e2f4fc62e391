"""What the engine says while it works, as plain data.

Every event the engine publishes is declared here. The training loop, the multi-run
campaign and the exporter publish them through one `Sink` (any callable taking an
event). The run store (SQLite, the one record of a run's events), the console progress
bar and the log are sinks; the UI reads what the run store recorded.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Protocol


@dataclass
class Event:
    run_id: str
    """Which run this belongs to; every event carries it."""
    ts: float = field(default_factory=time.time, kw_only=True)
    """Wall-clock time (seconds since the epoch) when the event was made."""

    @property
    def type(self) -> str:
        return _TYPE_OF[type(self)]

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, **asdict(self)}


@dataclass
class RunStarted(Event):
    config: dict
    """The full run config, with defaults resolved."""
    reasons: dict = field(default_factory=dict)
    """Why each automatically chosen default has its value."""
    total_steps: int = 0
    resumed_from_step: int = 0
    dropped_examples: int = 0
    """Examples left out because none of their answer tokens fit in max_seq_len."""


@dataclass
class Step(Event):
    step: int
    total: int
    loss: float
    lr: float
    grad_norm: float | None = None
    tokens_per_s: float | None = None
    """Non-padding tokens trained per second over the last logging window."""
    elapsed_s: float = 0.0
    eta_s: float | None = None
    epoch: float | None = None
    reward_accuracy: float | None = None
    """Preference runs: share of this step's pairs whose chosen answer the model now
    prefers more than its reference does (DPO) or prefers at all (ORPO)."""
    reward_margin: float | None = None
    """Preference runs: mean reward of the chosen minus the rejected answer."""
    chosen_logp: float | None = None
    """Preference runs: mean log-probability of the chosen answers."""
    rejected_logp: float | None = None


@dataclass
class Eval(Event):
    step: int
    loss: float
    split: str = "validation"
    answer_score: float | None = None
    """Share of the held-out prompts whose greedy answer gave the reference's fact."""
    f1: float | None = None
    rouge_l: float | None = None
    exact_match: float | None = None
    best: bool = False
    """This evaluation is the best so far (by answer score, then loss): its adapter is kept."""
    reward_accuracy: float | None = None
    """Preference runs: share of held-out pairs ranked the right way (see `Step`)."""
    reward_margin: float | None = None


@dataclass
class Samples(Event):
    """What the model answers now to held-out prompts, next to the reference and the base model."""
    step: int
    samples: list
    """[{prompt, reference, base, answer, score}] per held-out prompt."""
    answer_score: float | None = None
    base_score: float | None = None


@dataclass
class CheckpointSaved(Event):
    step: int
    path: str


@dataclass
class HardwareSample(Event):
    device: str
    """"cuda:0" or "cpu"."""
    gpu_name: str | None = None
    gpu_temp_c: float | None = None
    gpu_util_pct: float | None = None
    vram_used_mb: float | None = None
    vram_total_mb: float | None = None
    power_w: float | None = None
    cpu_pct: float | None = None
    ram_used_mb: float | None = None
    ram_total_mb: float | None = None


@dataclass
class LogLine(Event):
    message: str
    level: str = "INFO"


@dataclass
class Finished(Event):
    final_loss: float | None
    steps: int
    artifacts: dict = field(default_factory=dict)
    """Name → path of what the run produced (adapter, checkpoints, ...)."""
    tokens_per_s: float | None = None
    wall_s: float | None = None
    best_step: int | None = None
    """Step of the adapter kept as the result (the best held-out evaluation), if any."""
    best_score: float | None = None
    base_score: float | None = None
    """The base model's answer score on the same held-out prompts."""
    stopped_early: bool = False
    method: str = "sft"
    """How the run trained: sft, dpo or orpo."""
    reward_accuracy: float | None = None
    """Preference runs: the kept adapter's held-out reward accuracy."""


@dataclass
class Failed(Event):
    code: str
    message: str
    hint: str = ""


@dataclass
class Cancelled(Event):
    step: int
    checkpoint: str | None = None


@dataclass
class GpuGuardEvent(Event):
    """The guard acted on the GPU temperature."""
    action: str
    """"warn", "pause", "resume" or "abort"."""
    temp_c: float
    threshold_c: float
    message: str = ""


# ---- multi-run campaigns -------------------------------------------------------------

@dataclass
class CampaignRunStarted(Event):
    run_index: int
    """1-based index of the run within the campaign."""
    num_runs: int
    first_step: int
    """Campaign steps done before this run: where its part of the loss curve begins."""
    train_examples: int
    replay_examples: int = 0


@dataclass
class MergeDone(Event):
    run_index: int
    step: int
    """Campaign step at which the merge happened (a merge point on the loss curve)."""
    mode: str
    """"slao" or "sequential" (sequential keeps the run's adapter as it is)."""
    lam: float | None = None
    """λ(i) used for B; None in sequential mode."""


@dataclass
class ForgettingMeasured(Event):
    run_index: int
    losses: list
    """Validation loss on chunks 1..run_index with the adapter after this run."""
    avg_forgetting: float | None = None


# ---- exports --------------------------------------------------------------------------

@dataclass
class ExportProgress(Event):
    """A step of an export; a worker's export records it on its export run."""
    stage: str
    """load, reference, merge, write, quantize, verify, done; ollama while registering."""
    done: int = 0
    total: int = 0
    message: str = ""


_TYPES: dict[str, type[Event]] = {
    "run_started": RunStarted, "step": Step, "eval": Eval, "samples": Samples, "checkpoint": CheckpointSaved,
    "hardware": HardwareSample, "log": LogLine, "finished": Finished, "failed": Failed,
    "cancelled": Cancelled, "campaign_run_started": CampaignRunStarted, "merge": MergeDone,
    "forgetting": ForgettingMeasured, "export_progress": ExportProgress,
    "gpu_guard": GpuGuardEvent,
}
_TYPE_OF = {cls: name for name, cls in _TYPES.items()}


class Sink(Protocol):
    def __call__(self, event: Event) -> None: ...


def fan_out(*sinks: Sink | None) -> Callable[[Event], None]:
    """One sink that forwards to several; None entries are skipped."""
    live = [s for s in sinks if s is not None]

    def emit(event: Event) -> None:
        for sink in live:
            sink(event)

    return emit
