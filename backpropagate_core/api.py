"""The three-line Python API: `Trainer`.

    from backpropagate_core import Trainer
    trainer = Trainer("smollm2-135m")
    trainer.train("examples/quickstart.jsonl", steps=20)
    trainer.save("my-adapter")

Runs train in this process through the same pipeline as `backprop train` and are
recorded in the run store like any other run.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from backpropagate_core.config import DEFAULT_MODEL
from backpropagate_core.errors import BackpropError
from backpropagate_core.runs import events as ev
from backpropagate_core.runs.store import RunStore
from backpropagate_core.training import multirun
from backpropagate_core.training.campaign_state import OPTIONS
from backpropagate_core.training.pipeline import TrainResult, execute_run
from backpropagate_core.training.request import create_run
from backpropagate_core.training.run_config import build_config


class Trainer:
    """Three-line fine-tuning: `Trainer(model).train(data, steps=...)`, then `save(path)`.

    Runs train in this process and are recorded in the run store like any other run, so
    `backprop list-runs`, the UI and `backprop resume` see them.
    """

    def __init__(self, model: str = DEFAULT_MODEL, *, sink: ev.Sink | None = None,
                 home: str | Path | None = None, **overrides: Any) -> None:
        self.model = model
        self.overrides = overrides
        self.sink = sink
        self.store = RunStore(home)
        self.result: TrainResult | None = None

    def train(self, data: str | Path, steps: int | None = None, *, name: str | None = None,
              **overrides: Any) -> TrainResult:
        run = create_run(self.store, self.model, data, name=name,
                         overrides={**self.overrides, **overrides, "steps": steps})
        self.result = execute_run(run.id, self.store, extra_sinks=[self.sink])
        return self.result

    def resume(self, run_id: str) -> TrainResult:
        self.result = execute_run(run_id, self.store, extra_sinks=[self.sink], resume=True)
        return self.result

    def multi_run(self, data: str | Path, num_runs: int = 5, steps_per_run: int = 100,
                  samples_per_run: int | None = None, merge_mode: str = "slao", **kw: Any):
        """Train a campaign of runs over successive chunks of `data`, merging the adapter
        between runs (SLAO) and measuring forgetting; `save`/`export` then use the merged
        adapter. `kw` takes campaign options (see `OPTIONS`) and training settings."""
        options = {k: kw.pop(k) for k in OPTIONS if k in kw}
        config = build_config(self.model, str(data), options.get("name"), **{**self.overrides, **kw})
        self.result = multirun.run_campaign(config, num_runs, steps_per_run, samples_per_run,
                                            merge_mode=merge_mode, store=self.store, sink=self.sink,
                                            **options)
        return self.result

    def save(self, path: str | Path) -> Path:
        """Copy the trained LoRA adapter (peft format) to `path`."""
        if self.result is None or self.result.adapter_path is None:
            raise BackpropError("STATE_CHECKPOINT_INVALID", "nothing trained yet",
                                hint="Call train() first; a cancelled run has checkpoints but no final adapter.")
        target = Path(path).expanduser()
        shutil.copytree(self.result.adapter_path, target, dirs_exist_ok=True)
        return target

    def export(self, format: str = "gguf", quantization: str | None = None, **kwargs: Any):
        """Export the trained run (adapter, merged or GGUF); see `backpropagate_core.export`."""
        from backpropagate_core.export import export_model

        if self.result is None:
            raise BackpropError("STATE_CHECKPOINT_INVALID", "nothing trained yet", hint="Call train() first.")
        return export_model(self.result.run_id, format=format, quantization=quantization, **kwargs)
