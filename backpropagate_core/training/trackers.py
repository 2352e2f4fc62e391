"""Experiment trackers: TensorBoard, Weights & Biases and MLflow through transformers'
own callbacks.

`report_to="auto"` (the default) turns on TensorBoard when it is installed (event files
in the run folder, nothing leaves the machine) and W&B or MLflow only when their own
settings say where to send data (`WANDB_API_KEY`/`WANDB_MODE`, `MLFLOW_TRACKING_URI`):
no run is uploaded anywhere the user did not point it. Naming a tracker turns it on.
Run names are the run id, so a tracker's run is found from `backprop list-runs`.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from backpropagate_core.errors import BackpropError

TRACKERS = ("tensorboard", "wandb", "mlflow")
TENSORBOARD_DIR = "tensorboard"
_OPT_IN_ENV = {"tensorboard": (), "wandb": ("WANDB_API_KEY", "WANDB_MODE"),
               "mlflow": ("MLFLOW_TRACKING_URI",)}


def _installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def resolve(report_to: str | None) -> list[str]:
    """The trackers a run reports to: "auto", "none", or a comma list of names."""
    spec = (report_to or "none").strip().lower()
    if spec in ("none", ""):
        return []
    if spec == "auto":
        return [n for n in TRACKERS if _installed(n)
                and (not _OPT_IN_ENV[n] or any(os.environ.get(v) for v in _OPT_IN_ENV[n]))]
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise BackpropError("CONFIG_INVALID", f"unknown tracker(s) in report_to: {', '.join(unknown)}; "
                            f"use auto, none or a comma list of {', '.join(TRACKERS)}")
    missing = [n for n in names if not _installed(n)]
    if missing:
        raise BackpropError("DEP_MISSING", f"report_to names {', '.join(missing)}, which is not installed",
                            hint=f"pip install {' '.join(missing)}, or set report_to=auto")
    return names


def setup(report_to: str | None, run_dir: Path) -> tuple[list[str], list]:
    """(names for TrainingArguments.report_to, extra callbacks). TensorBoard writes into
    `<run_dir>/tensorboard` instead of transformers' default under the checkpoints."""
    names = resolve(report_to)
    callbacks = []
    if "tensorboard" in names:
        from transformers.integrations import TensorBoardCallback

        board = TensorBoardCallback()
        board.logging_dir = str(Path(run_dir) / TENSORBOARD_DIR)  # the writer opens on rank 0 only
        callbacks.append(board)
        names = [n for n in names if n != "tensorboard"]
    return names, callbacks
