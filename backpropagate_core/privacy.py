"""No telemetry: switch off every usage report the libraries we load would send.

The only network calls backpropagate makes are the ones the user asks for (hub downloads
and pushes, Ollama on the configured host, a tunnel they started). Libraries read these
variables when they are first imported, so the package sets them on import; `setdefault`
leaves a value the user set on purpose alone. Child processes (the training worker, the
Reflex server and its bun/npm tools) inherit them.
"""

from __future__ import annotations

import os

TELEMETRY_OFF = {
    "HF_HUB_DISABLE_TELEMETRY": "1",      # huggingface_hub, transformers, datasets, peft
    "DO_NOT_TRACK": "1",                  # the cross-tool convention (also read by huggingface_hub)
    "UNSLOTH_DISABLE_STATISTICS": "1",    # Unsloth downloads a file from the hub to count installs
    "REFLEX_TELEMETRY_ENABLED": "false",  # Reflex usage reports (rxconfig.py also sets it)
    "REFLEX_CHECK_LATEST_VERSION": "0",   # Reflex asks PyPI for a newer version at start
    "NEXT_TELEMETRY_DISABLED": "1",       # the frontend toolchain
    "NPM_CONFIG_UPDATE_NOTIFIER": "false",
}


def disable_telemetry() -> None:
    for name, value in TELEMETRY_OFF.items():
        os.environ.setdefault(name, value)


def status() -> dict[str, str | None]:
    """The effective value of each variable, for `backprop info`."""
    return {name: os.environ.get(name) for name in TELEMETRY_OFF}
