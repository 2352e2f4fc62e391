"""Facts about this machine and install, for `backprop info` and bug reports."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import shutil
import sys

_PACKAGES = ["torch", "transformers", "peft", "trl", "accelerate", "datasets", "reflex",
             "llama-cpp-python", "gguf", "unsloth", "bitsandbytes", "nvidia-ml-py",
             "huggingface-hub", "pydantic-settings"]
_EXTRAS = {"ui": ["reflex"], "export": ["llama_cpp"], "monitoring": ["pynvml"],
           "unsloth": ["unsloth"], "dev": ["pytest", "hypothesis", "playwright"]}


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _gpu() -> dict:
    from backpropagate_core.gpu import NvmlReader

    nvml = NvmlReader()
    if not nvml.available:
        return {"nvml": "no NVIDIA GPU visible"}
    n = nvml._nvml
    return {"name": str(nvml.name), "driver": n.nvmlSystemGetDriverVersion(),
            "count": n.nvmlDeviceGetCount(), **nvml.read()}


def _torch() -> dict:
    if importlib.util.find_spec("torch") is None:
        return {"installed": False}
    import torch

    return {"version": torch.__version__, "cuda_available": torch.cuda.is_available(),
            "cuda_version": torch.version.cuda, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads()}


def collect() -> dict:
    """One dict with OS, Python, packages, extras, hardware, disk and memory."""
    import psutil

    from backpropagate_core.config import load_settings

    settings = load_settings()
    home = settings.home
    home.mkdir(parents=True, exist_ok=True)
    vm = psutil.virtual_memory()
    disk = shutil.disk_usage(home)
    return {
        "system": {"os": platform.platform(), "python": sys.version.split()[0],
                   "executable": sys.executable, "cpus": os.cpu_count(),
                   "ram_total_gb": round(vm.total / 2**30, 1), "ram_free_gb": round(vm.available / 2**30, 1)},
        "torch": _torch(),
        "gpu": _gpu(),
        "packages": {name: _version(name) or "not installed" for name in _PACKAGES},
        "extras": {extra: all(importlib.util.find_spec(m) is not None for m in mods)
                   for extra, mods in _EXTRAS.items()},
        "paths": {"home": str(home), "disk_free_gb": round(disk.free / 2**30, 1),
                  "ui_output_dir": str(settings.ui.output_dir)},
    }
