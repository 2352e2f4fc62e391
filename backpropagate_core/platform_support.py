"""What differs on Windows, decided in one place so every branch is explicit and tested.

We cannot run Windows here: each function reads `sys.platform` when called, and the tests
switch it to "win32" to exercise the Windows branch. `docs/windows.md` says which of
these were checked on a real machine and which only by those tests.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

# Ada (RTX 40xx, L4/L40) and Blackwell (RTX 50xx, B100/B200, RTX PRO) cards.
_NO_XFORMERS_NAME = re.compile(r"RTX\s*(PRO\s*)?[45]0\d\d|\bL40S?\b|\bL4\b|Blackwell|\bB[12]00\b",
                               re.IGNORECASE)


def is_windows() -> bool:
    return sys.platform == "win32"


def dataloader_workers(requested: int = 0) -> int:
    """DataLoader worker processes: always 0 on Windows.

    Windows starts processes by spawning a fresh interpreter that re-imports torch and the
    training module for every worker (seconds and hundreds of MB each, and a crash when an
    entry point lacks a `__main__` guard). The rows are tokenized before training in the
    main process (`train.prepare`), so workers would only pad batches anyway.
    """
    return 0 if is_windows() else max(0, requested)


def stop_signals() -> list[signal.Signals]:
    """Signals that ask a run to stop gracefully in this process.

    Windows has no SIGTERM delivery (`kill` there terminates outright), so only Ctrl-C
    and Ctrl-Break are caught; every other stop goes through the run folder's CANCEL
    flag file, which the worker polls after each step on all platforms.
    """
    if is_windows():
        return [signal.SIGINT] + ([signal.SIGBREAK] if hasattr(signal, "SIGBREAK") else [])
    return [signal.SIGINT, signal.SIGTERM]


def worker_popen_kwargs() -> dict:
    """Detach a worker from the launcher's console so closing the UI does not end a run."""
    if is_windows():
        flags = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0x00000200)
        return {"creationflags": flags}
    return {"start_new_session": True}


def use_xformers(gpu_name: str | None, capability: tuple[int, int] | None = None) -> bool:
    """Whether optional xformers attention should be used on this GPU.

    Not on Ada (RTX 40, compute 8.9) or Blackwell (RTX 50, compute 10+) cards: prebuilt
    xformers wheels have shipped kernels that fail or fall behind PyTorch's own SDPA
    there (e.g. a flash-attention-3 dispatch that runs Hopper-only kernels on Blackwell).
    Without a CUDA GPU there is nothing to accelerate.
    """
    if not gpu_name:
        return False
    if capability is not None and (tuple(capability) == (8, 9) or capability[0] >= 10):
        return False
    return not _NO_XFORMERS_NAME.search(gpu_name)


def hide_xformers() -> None:
    """Make `import xformers` fail in this process, so libraries that use it when present
    (Unsloth) fall back to PyTorch SDPA. Call before importing them."""
    sys.modules["xformers"] = None  # type: ignore[assignment]


def configure_attention(device: str, gpu_name: str | None) -> bool:
    """Hide xformers where `use_xformers` says no; returns whether it may be used."""
    if device != "cuda":
        return False
    import torch

    allowed = use_xformers(gpu_name, torch.cuda.get_device_capability(0))
    if not allowed:
        hide_xformers()
    return allowed


def replace(src: Path, dst: Path, attempts: int = 10, wait_s: float = 0.2) -> None:
    """`os.replace`, retried on Windows while another process (a virus scanner, the search
    indexer) still holds a just-written file open."""
    for attempt in range(attempts):
        try:
            os.replace(src, dst)
            return
        except PermissionError:
            if not is_windows() or attempt == attempts - 1:
                raise
            time.sleep(wait_s)


def describe() -> dict:
    """How this platform affects runs; part of `backprop info`."""
    return {"platform": sys.platform, "windows": is_windows(),
            "dataloader_workers": dataloader_workers(),
            "stop_signals": [s.name for s in stop_signals()],
            "worker_detach": next(iter(worker_popen_kwargs()))}


def free_cpu_threads() -> int:
    """Threads for llama.cpp: the cores not already busy.

    llama.cpp's worker threads spin while they wait for each other, so on a busy machine
    one thread too many makes evaluation 10-40x slower (measured here), not just a bit.
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0]
    except OSError:
        busy = 0.0
    return max(1, min(cpus, int(cpus - busy + 0.5)))
