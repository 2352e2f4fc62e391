"""Where everything of a run lives on disk: the one place that names its files.

`<home>/runs/<run_id>/` holds what is needed to rebuild, resume or export the run; every
stage asks a `RunDir` for a path instead of joining names itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

IGNORE_INDEX = -100
"""The label of a token that is not trained on (prompts, padding); torch's default."""
MANIFEST = "backpropagate.json"
"""Written inside each checkpoint and adapter folder once it is complete."""


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def config(self) -> Path:
        """The run config as given (what `create_run` validated)."""
        return self.path / "config.json"

    @property
    def resolved(self) -> Path:
        """Defaults resolved against data and hardware, with reasons; a resume reuses them."""
        return self.path / "resolved.json"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def adapter(self) -> Path:
        """The final LoRA adapter (peft format)."""
        return self.path / "adapter"

    @property
    def best(self) -> Path:
        """The adapter of the best held-out evaluation so far (what the run keeps)."""
        return self.path / "best"

    @property
    def cancel_flag(self) -> Path:
        """Written by a stop request; the training loop polls it after each step."""
        return self.path / "CANCEL"

    @property
    def run_log(self) -> Path:
        """Every log record of the run, from DEBUG up."""
        return self.path / "run.log"

    @property
    def worker_log(self) -> Path:
        """The worker process's own output (a crash in imports lands here)."""
        return self.path / "worker.log"

    @property
    def campaign(self) -> Path:
        """A multi-run campaign's committed state and adapters."""
        return self.path / "campaign"

    @property
    def exports(self) -> Path:
        return self.path / "exports"

    @property
    def feedback(self) -> Path:
        """Thumbs and edits on the run's chat answers, one JSON line each, append-only."""
        return self.path / "feedback.jsonl"

    def checkpoint(self, name: str) -> Path:
        return self.checkpoints / name
