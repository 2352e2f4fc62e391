"""Hardware sampling: GPU temperature, memory, utilisation and power through NVML, or
CPU load and RAM when no NVIDIA GPU is visible. A background thread turns samples into
`HardwareSample` events for the run store and the UI.
"""

from __future__ import annotations

import threading
from typing import Callable

from backpropagate_core import events as ev


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
            self.available = True
        except Exception:  # noqa: BLE001 - no driver, no package, no device: all mean "no GPU"
            self.available = False

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
        cpu = read_cpu
        return lambda: {**cpu(), **nvml.read()}
    return read_cpu


class Sampler:
    """Emits a HardwareSample every `interval` seconds until stopped."""

    def __init__(self, run_id: str, sink: ev.Sink, interval: float = 5.0,
                 reader: Callable[[], dict] | None = None) -> None:
        self.run_id, self.sink, self.interval = run_id, sink, interval
        self.reader = reader or default_reader()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="hw-sampler", daemon=True)

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval + 1)

    def sample(self) -> ev.HardwareSample:
        return ev.HardwareSample(self.run_id, **self.reader())

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sink(self.sample())
            self._stop.wait(self.interval)
