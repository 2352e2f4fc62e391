"""Facts about this machine and install, for `backprop info` and bug reports.

Everything here is read locally; nothing is sent anywhere. Each section fails on its own
(a broken driver or an invalid setting still leaves the rest of the report).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import shutil
import sys
from pathlib import Path

_PACKAGES = ["torch", "transformers", "peft", "trl", "accelerate", "datasets", "tokenizers",
             "safetensors", "reflex", "llama-cpp-python", "gguf", "unsloth", "bitsandbytes",
             "xformers", "nvidia-ml-py", "huggingface-hub", "pydantic-settings"]
_EXTRAS = {"ui": ["reflex"], "export": ["llama_cpp"], "monitoring": ["pynvml"],
           "unsloth": ["unsloth"], "dev": ["pytest", "hypothesis", "playwright"]}
_TOOLS = ["bun", "node", "ollama", "cloudflared", "ngrok", "nvidia-smi"]


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _gpu() -> dict:
    """The first NVIDIA GPU through NVML (name, driver, memory, temperature)."""
    from backpropagate_core.hardware.gpu import NvmlReader

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

    info = {"version": torch.__version__, "cuda_available": torch.cuda.is_available(),
            "cuda_version": torch.version.cuda, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info(0)
        info.update(gpu_name=torch.cuda.get_device_name(0),
                    gpu_capability=".".join(map(str, torch.cuda.get_device_capability(0))),
                    gpu_count=torch.cuda.device_count(), bf16=torch.cuda.is_bf16_supported(),
                    vram_free_gb=round(free / 2**30, 1), vram_total_gb=round(total / 2**30, 1))
    mps = getattr(torch.backends, "mps", None)
    info["mps_available"] = bool(mps and mps.is_available())
    return info


def _system() -> dict:
    import psutil

    vm = psutil.virtual_memory()
    return {"os": platform.platform(), "machine": platform.machine(),
            "python": sys.version.split()[0], "executable": sys.executable, "cpus": os.cpu_count(),
            "ram_total_gb": round(vm.total / 2**30, 1), "ram_free_gb": round(vm.available / 2**30, 1)}


def _settings() -> tuple[dict, dict]:
    """(paths, logging) from settings; an invalid setting is reported, not raised."""
    from backpropagate_core.config import load_settings
    from backpropagate_core.errors import BackpropError

    try:
        settings = load_settings()
    except BackpropError as err:
        return {"settings_error": f"[{err.code}] {err.message}"}, {}
    home = settings.home
    existing = next((p for p in [home, *home.parents] if p.exists()), Path.cwd())
    disk = shutil.disk_usage(existing)
    paths = {"home": str(home), "disk_free_gb": round(disk.free / 2**30, 1),
             "disk_total_gb": round(disk.total / 2**30, 1),
             "ui_output_dir": str(settings.ui.output_dir)}
    logging = {"level": settings.log_level, "json": settings.log_json,
               "file": str(settings.log_file) if settings.log_file else None}
    return paths, logging


def _section(fn) -> dict:
    try:
        return fn()
    except Exception as err:  # noqa: BLE001 - a report with one broken section beats no report
        return {"error": f"{type(err).__name__}: {err}"}


def collect() -> dict:
    """One dict with OS, Python, packages, extras, hardware, disk, memory and settings."""
    from backpropagate_core import __version__, platform_support, privacy

    paths, logging = _settings()
    return {
        "backpropagate": __version__,
        "system": _section(_system),
        "torch": _section(_torch),
        "gpu": _section(_gpu),
        "packages": {name: _version(name) or "not installed" for name in _PACKAGES},
        "extras": {extra: all(importlib.util.find_spec(m) is not None for m in mods)
                   for extra, mods in _EXTRAS.items()},
        "tools": {tool: shutil.which(tool) for tool in _TOOLS},
        "paths": paths,
        "logging": logging,
        "runtime": _section(platform_support.describe),
        "telemetry_off": privacy.status(),
    }
