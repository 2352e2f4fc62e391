"""Out-of-memory recovery for the training loop (`trainer.fit` drives it).

A CUDA out-of-memory error mid-step leaves the model and optimizer at the last completed
step. We drop the half-accumulated gradients, give the cached blocks back to the driver,
checkpoint that step, and the caller retries from it with half the batch and twice the
accumulation, so the effective batch and the data order stay the same.
"""

from __future__ import annotations

import gc
import os
from pathlib import Path

from backpropagate_core.errors import BackpropError

MAX_RETRIES = 3


def is_oom(err: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or a RuntimeError saying so (MPS and older builds)."""
    import torch

    if isinstance(err, torch.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


def single_process() -> bool:
    """Recovery halves this process's batch; under `accelerate launch` every rank would
    have to agree, so distributed runs fail with the plain error instead."""
    return int(os.environ.get("WORLD_SIZE", "1")) <= 1


def free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def rescue(trainer, output_dir: Path) -> Path | None:
    """Free what the failed step held and checkpoint the last completed step; returns
    the newest complete checkpoint to resume from (None: start again from step 0)."""
    from backpropagate_core.training.checkpoints import checkpoint_step, prepare_checkpoints

    trainer.model.zero_grad(set_to_none=True)
    free_memory()
    step = trainer.state.global_step
    newest = prepare_checkpoints(output_dir)
    if step > 0 and (newest is None or checkpoint_step(newest) < step):
        trainer._save_checkpoint(trainer.model, trial=None)
        newest = prepare_checkpoints(output_dir)
    return newest


def exhausted(err: BaseException, batch: int, attempts: int) -> BackpropError:
    return BackpropError(
        "RUNTIME_OOM_RECOVERY_EXHAUSTED",
        f"out of memory at batch size {batch} after {attempts} retr{'y' if attempts == 1 else 'ies'} "
        f"with smaller batches: {type(err).__name__}: {str(err)[:300]}")
