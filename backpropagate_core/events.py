"""What the engine says while it works, as plain data.

The training loop, the multi-run campaign and the exporter publish these dataclasses
through one `Sink` (any callable taking an event). The run store, the console progress
bar and a JSONL file are all just sinks; the UI reads what the run store recorded.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
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


@dataclass
class Eval(Event):
    step: int
    loss: float
    split: str = "validation"


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


@dataclass
class Failed(Event):
    code: str
    message: str
    hint: str = ""


@dataclass
class Cancelled(Event):
    step: int
    checkpoint: str | None = None


_TYPES: dict[str, type[Event]] = {
    "run_started": RunStarted, "step": Step, "eval": Eval, "checkpoint": CheckpointSaved,
    "hardware": HardwareSample, "log": LogLine, "finished": Finished, "failed": Failed,
    "cancelled": Cancelled,
}
_TYPE_OF = {cls: name for name, cls in _TYPES.items()}


def register_event(name: str, cls: type[Event]) -> type[Event]:
    """Let another stage (multi-run, export) add its own event types."""
    _TYPES[name] = cls
    _TYPE_OF[cls] = name
    return cls


def from_dict(data: dict[str, Any]) -> Event:
    """Rebuild an event from `to_dict` output; unknown keys are ignored."""
    cls = _TYPES[data["type"]]
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


class Sink(Protocol):
    def __call__(self, event: Event) -> None: ...


def fan_out(*sinks: Sink | None) -> Callable[[Event], None]:
    """One sink that forwards to several; None entries are skipped."""
    live = [s for s in sinks if s is not None]

    def emit(event: Event) -> None:
        for sink in live:
            sink(event)

    return emit


class JsonlSink:
    """Appends each event as one JSON line; the file survives the process."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, event: Event) -> None:
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(event.to_dict(), default=str) + "\n")


def null_sink(event: Event) -> None:
    """Stands in where nobody listens, so callers never check for a sink."""
