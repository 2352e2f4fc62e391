"""Training on several processes through `accelerate launch`: DDP, FSDP and DeepSpeed come
from the ecosystem; this module only decides who writes what.

`backprop train --num-processes N [--config-file accelerate.yaml]` records the run, then
starts `accelerate launch ... -m backpropagate_core.runs.worker RUN_ID`. Every process trains;
rank 0 alone writes events, the run store, `resolved.json`, checkpoints and the adapter.
The others resolve their settings from rank 0's `resolved.json` (so batch sizes agree)
and report one summary line on stderr. Stop requests and the GPU guard are agreed by all
ranks after each step, so no rank waits forever in a collective another rank has left.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager, nullcontext
from pathlib import Path

from backpropagate_core.runs import events as ev


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def _state():
    import torch
    from accelerate import PartialState

    # cpu=True turns a CPU-only launch into gloo DDP (accelerate's MULTI_CPU).
    return PartialState(cpu=not torch.cuda.is_available())


@contextmanager
def main_first():
    """Rank 0 runs the block first (writing what the others then read)."""
    if world_size() <= 1:
        yield
        return
    with _state().main_process_first():
        yield


def any_rank(flag: bool) -> bool:
    """True on every rank when it is true on any; a plain bool in one process."""
    if world_size() <= 1:
        return flag
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        return flag
    device = "cuda" if torch.cuda.is_available() and dist.get_backend() == "nccl" else "cpu"
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def follower_sink(run_id: str):
    """What a rank other than 0 reports: one stderr line when it finishes or fails."""
    me = rank()

    def sink(event: ev.Event) -> None:
        if isinstance(event, ev.Finished):
            print(f"rank {me}: finished run {run_id} at step {event.steps}, loss {event.final_loss}",
                  file=sys.stderr, flush=True)
        elif isinstance(event, ev.Failed):
            print(f"rank {me}: failed [{event.code}] {event.message}", file=sys.stderr, flush=True)

    return sink


def log_context(bind):
    """The run-log binding for rank 0; other ranks must not append to the same run.log."""
    return bind if is_main() else nullcontext()


def launch_command(run_id: str, num_processes: int | None, config_file: Path | None,
                   resume: bool = False) -> list[str]:
    """`accelerate launch` of the worker for this run.

    Without a config file, `--multi_gpu` makes accelerate start the processes through
    torchrun; on a machine without CUDA the trainer then joins them with gloo on the CPU.
    """
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if config_file is not None:
        cmd += ["--config_file", str(config_file)]
    else:
        cmd += ["--multi_gpu", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    if num_processes:
        cmd += ["--num_processes", str(num_processes)]
    cmd += ["-m", "backpropagate_core.runs.worker", run_id, "--console"]
    return cmd + (["--resume"] if resume else [])
