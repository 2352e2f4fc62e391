"""Hardware sampling and the GPU temperature guard.

A background thread reads GPU temperature, memory, utilisation and power through NVML (or
CPU load and RAM when no NVIDIA GPU is visible) and turns each reading into a
`HardwareSample` event for the run store and the UI. The `Guard` watches the temperature:
it warns at 80 °C, pauses training at 90 °C until the card is back under 80 °C, and
aborts at 95 °C or 5 °C short of the card's own shutdown temperature, whichever is lower.
The training loop asks the guard after every step (`wait_if_paused`).
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from backpropagate_core.runs import events as ev
from backpropagate_core.config import GpuGuardSettings
from backpropagate_core.errors import BackpropError


class NvmlReader:
    """Reads one GPU through nvidia-ml-py; `available` is False when NVML is absent."""

    def __init__(self, index: int = 0) -> None:
        self.available = False
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self.name = pynvml.nvmlDeviceGetName(self._handle)
            self.index = index
            self.shutdown_c = self._threshold(pynvml.NVML_TEMPERATURE_THRESHOLD_SHUTDOWN)
            self.available = True
        except Exception:  # noqa: BLE001 - no driver, no package, no device: all mean "no GPU"
            self.available = False

    def _threshold(self, kind) -> float | None:
        try:
            return float(self._nvml.nvmlDeviceGetTemperatureThreshold(self._handle, kind))
        except self._nvml.NVMLError:
            return None

    def read(self) -> dict:
        n, h = self._nvml, self._handle
        mem = n.nvmlDeviceGetMemoryInfo(h)
        util = n.nvmlDeviceGetUtilizationRates(h)
        try:
            power = n.nvmlDeviceGetPowerUsage(h) / 1000.0
        except n.NVMLError:
            power = None
        return {
            "device": f"cuda:{self.index}", "gpu_name": str(self.name),
            "gpu_temp_c": float(n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU)),
            "gpu_util_pct": float(util.gpu), "vram_used_mb": mem.used / 2**20,
            "vram_total_mb": mem.total / 2**20, "power_w": power,
        }


def read_cpu() -> dict:
    import psutil

    vm = psutil.virtual_memory()
    return {"device": "cpu", "cpu_pct": psutil.cpu_percent(interval=None),
            "ram_used_mb": (vm.total - vm.available) / 2**20, "ram_total_mb": vm.total / 2**20}


def default_reader() -> Callable[[], dict]:
    """NVML when it sees a GPU, else CPU and RAM."""
    nvml = NvmlReader()
    if nvml.available:
        def read() -> dict:
            return {**read_cpu(), **nvml.read()}

        read.shutdown_c = nvml.shutdown_c  # type: ignore[attr-defined]  (the guard reads it)
        return read
    return read_cpu




class Guard:
    """Temperature thresholds as a small state machine, fed one reading at a time.

    `observe` returns the action a reading calls for (or None); the sampler thread feeds
    it and the training thread waits in `wait_if_paused` while the card cools.
    """

    def __init__(self, settings: GpuGuardSettings | None = None, shutdown_c: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.s = settings or GpuGuardSettings()
        # Stay clear of the card's own emergency shutdown, which would kill the run uncleanly.
        self.abort_c = min(self.s.abort_c, shutdown_c - 5) if shutdown_c else self.s.abort_c
        self.clock = clock
        self.paused_since: float | None = None
        self.warned = False
        self.aborted: str | None = None
        self._cooled = threading.Event()
        self._cooled.set()

    @property
    def paused(self) -> bool:
        return self.paused_since is not None

    def observe(self, temp_c: float | None) -> tuple[str, float] | None:
        """(action, threshold) for this reading, or None when nothing changes."""
        if temp_c is None or self.aborted:
            return None
        if temp_c >= self.abort_c:
            return self._abort(f"GPU at {temp_c:.0f} °C, at or above the abort limit {self.abort_c:.0f} °C"), self.abort_c
        if self.paused:
            if temp_c < self.s.resume_c:
                self.paused_since = None
                self._cooled.set()
                return "resume", self.s.resume_c
            if self.clock() - self.paused_since > self.s.max_pause_s:
                return self._abort(f"GPU still at {temp_c:.0f} °C after a {self.s.max_pause_s:.0f} s pause"), self.s.resume_c
            return None
        if temp_c >= self.s.pause_c:
            self.paused_since = self.clock()
            self._cooled.clear()
            return "pause", self.s.pause_c
        if temp_c >= self.s.warn_c and not self.warned:
            self.warned = True
            return "warn", self.s.warn_c
        if temp_c < self.s.warn_c:
            self.warned = False  # warn again on the next excursion
        return None

    def _abort(self, why: str) -> str:
        self.aborted = why
        self._cooled.set()  # release a waiting training thread so it can stop
        return "abort"

    def wait_if_paused(self, should_stop: Callable[[], bool] = lambda: False) -> None:
        """Block while paused; raise RUNTIME_GPU_OVERHEAT once the guard aborted."""
        while not self._cooled.wait(0.5):
            if should_stop():
                return
        if self.aborted:
            raise BackpropError("RUNTIME_GPU_OVERHEAT", self.aborted)


_GUARD_MESSAGES = {
    "warn": "GPU temperature {t:.0f} °C reached the warning level ({th:.0f} °C)",
    "pause": "GPU temperature {t:.0f} °C: training paused until it cools below the resume level",
    "resume": "GPU cooled to {t:.0f} °C (below {th:.0f} °C): training resumes",
    "abort": "GPU temperature {t:.0f} °C: stopping the run ({th:.0f} °C limit)",
}


class Sampler:
    """Emits a HardwareSample every `interval` seconds until stopped, and feeds the guard."""

    def __init__(self, run_id: str, sink: ev.Sink, interval: float = 5.0,
                 reader: Callable[[], dict] | None = None, settings: GpuGuardSettings | None = None) -> None:
        self.run_id, self.sink, self.interval = run_id, sink, interval
        self.reader = reader or default_reader()
        self.guard = Guard(settings, shutdown_c=getattr(self.reader, "shutdown_c", None))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="hw-sampler", daemon=True)

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval + 1)

    def sample(self) -> ev.HardwareSample:
        sample = ev.HardwareSample(self.run_id, **self.reader())
        acted = self.guard.observe(sample.gpu_temp_c)
        if acted:
            action, threshold = acted
            message = _GUARD_MESSAGES[action].format(t=sample.gpu_temp_c, th=threshold)
            self.sink(ev.GpuGuardEvent(self.run_id, action=action, temp_c=sample.gpu_temp_c,
                                    threshold_c=threshold, message=message))
            self.sink(ev.LogLine(self.run_id, message=message,
                                 level="INFO" if action == "resume" else "WARNING"))
        return sample

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sink(self.sample())
            self._stop.wait(self.interval)
