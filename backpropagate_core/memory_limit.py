"""The address-space limit (RLIMIT_AS) of the engine processes the web UI starts.

The UI hands browser input (uploaded datasets, model specs, prompts) to the engine helper
and to training and export workers. A forged model config or a decompression bomb could
make one of them ask for more memory than the machine has. Under RLIMIT_AS that
allocation fails at once inside that process (MemoryError, or torch's "can't allocate
memory"), which then reports RUNTIME_MEMORY_LIMIT, instead of pushing the machine into
swap or the kernel's OOM killer.

The limit counts address space, not memory in use, and torch reserves more than it
touches. Measured on a 2-core CPU machine (torch 2.13 CPU build), peak VmPeak / VmHWM:
tiny-model training worker 2.35 / 0.47 GiB, SmolLM2-135M training worker 3.26 / 1.46 GiB,
tiny GGUF export 1.03 / 0.40 GiB, engine helper after a SmolLM2 chat 1.82 / 0.94 GiB.
The reserve grows with threads (a malloc arena and a stack each), so the default scales
with the machine: 3/4 of its memory, never under 8 GiB.

Only on Linux, and never where a GPU driver is present: the CUDA (and ROCm) driver maps
an address range far larger than the card when it starts, and fails with out of memory
under a limit that would still leave room for training.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from backpropagate_core.errors import BackpropError

GIB = 1 << 30
FLOOR_BYTES = 8 * GIB
"""The automatic limit is never lower: over twice the SmolLM2 worker's measured peak."""
UI_ENV = "BACKPROPAGATE_ENGINE_UNDER_UI"
"""Set in the UI server's environment; the engine processes it starts inherit it."""
GPU_DRIVER_PATHS = ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia", "/dev/kfd", "/dev/dxg")
_EXHAUSTED_TEXT = ("can't allocate memory", "cannot allocate memory", "not enough memory",
                   "memory allocation of", "std::bad_alloc")

_applied: int | None = None
"""The limit this process runs under (bytes), once `apply` set one."""


def mark_ui_server() -> None:
    """Called by the UI server when it starts: engine processes it starts from now on
    (the helper, training and export workers) run under the limit. The CLI never calls it."""
    os.environ[UI_ENV] = "1"


def machine_memory() -> int | None:
    """Bytes of memory this process may use: physical memory, or a smaller cgroup limit."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
    try:
        cgroup = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if cgroup.isdigit():
            total = min(total, int(cgroup))
    except OSError:
        pass
    return total


def limit_bytes(setting_gb: float | None, memory: int | None = None) -> int | None:
    """The limit for a `security.engine_memory_gb` value: None chooses 3/4 of the machine's
    memory (at least 8 GiB), 0 means no limit."""
    if setting_gb is not None:
        return int(setting_gb * GIB) or None
    memory = machine_memory() if memory is None else memory
    return max(FLOOR_BYTES, memory * 3 // 4) if memory else None


def gpu_driver_present() -> bool:
    return any(os.path.exists(path) for path in GPU_DRIVER_PATHS)


def apply(setting_gb: float | None) -> int | None:
    """Lower this process's soft RLIMIT_AS to the limit; returns it in bytes, or None when
    no limit was set (0, not Linux, a GPU driver present, or a lower limit already set)."""
    global _applied
    limit = limit_bytes(setting_gb)
    if not limit or not sys.platform.startswith("linux") or gpu_driver_present():
        return None
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    if soft != resource.RLIM_INFINITY and soft <= limit:
        return None  # someone (ulimit -v) already set a tighter one
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    _applied = limit
    return limit


def apply_under_ui() -> int | None:
    """`apply` the configured limit when this engine process was started by the UI server."""
    if os.environ.get(UI_ENV) != "1":
        return None
    from backpropagate_core.config import load_settings

    return apply(load_settings().security.engine_memory_gb)


def applied() -> int | None:
    return _applied


def coded(err: BaseException | None) -> BackpropError | None:
    """RUNTIME_MEMORY_LIMIT when `err` (or an error it came from) is an allocation that
    failed while this process runs under the limit; None otherwise."""
    if _applied is None:
        return None
    seen: BaseException | None = err
    for _ in range(20):  # a chain is short; the bound guards against a cycle
        if seen is None:
            break
        if isinstance(seen, MemoryError) or exhausted(str(seen)):
            return exceeded(f"{type(seen).__name__}: {seen}"[:500])
        seen = seen.__cause__ or seen.__context__
    return None


def exhausted(text: str) -> bool:
    """Whether `text` reports a failed allocation (torch, Rust and C++ runtimes say so)."""
    lowered = text.lower()
    return any(t in lowered for t in _EXHAUSTED_TEXT)


def exceeded(detail: str, limit: int | None = None) -> BackpropError:
    """RUNTIME_MEMORY_LIMIT with `detail`, naming the limit when this process knows it."""
    limit = limit or _applied
    size = f" ({limit / GIB:.1f} GiB)" if limit else ""
    return BackpropError("RUNTIME_MEMORY_LIMIT", f"the engine process reached its memory limit{size}: {detail}")
