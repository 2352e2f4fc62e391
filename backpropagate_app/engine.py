"""What the app asks of the engine: settings, the run store, launchers, presets, files.

Everything here is import-light: training, dataset reports and plans run in engine
subprocesses started by `backpropagate_core.worker`, so the UI server never loads torch.
The blocking calls (SQLite, subprocesses) are plain functions; the States run them with
`asyncio.to_thread` so the event loop stays free.
"""

from __future__ import annotations

import re
from pathlib import Path

from backpropagate_core import presets, worker
from backpropagate_core.config import Settings, load_settings
from backpropagate_core.errors import BackpropError
from backpropagate_core.runs import RunStore

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLES_DIR = REPO_ROOT / "examples"
DATASET_TYPES = (".jsonl", ".json", ".csv", ".parquet")
CUSTOM_MODEL = "custom"
"""Model picker value meaning "use the text typed in the custom model box"."""

_stores: dict[Path, RunStore] = {}


def settings() -> Settings:
    return load_settings()


def store() -> RunStore:
    """The run store of the configured home; one instance per home, reused across polls."""
    home = settings().home
    if home not in _stores:
        _stores[home] = RunStore(home)
    return _stores[home]


# ---- models ---------------------------------------------------------------------------

def preset_options() -> list[dict[str, str]]:
    """Presets for the model picker, each labelled with its size and memory needs."""
    return [{"value": p.name,
             "label": f"{p.name} · {p.params_b:g}B · {p.vram_gb:g} GB VRAM "
                      f"({p.vram_gb_4bit:g} GB 4-bit)",
             "description": p.description} for p in presets.PRESETS]


def default_model() -> str:
    return settings().model


def model_spec(choice: str, custom: str) -> str:
    """The model string for the engine from the picker value and the custom text box."""
    spec = custom.strip() if choice == CUSTOM_MODEL else choice.strip()
    if not spec:
        raise BackpropError("INPUT_MODEL_NOT_FOUND", "no model chosen",
                            hint="Pick a preset or type a hub id / local folder in the custom box.")
    return spec


# ---- dataset files ----------------------------------------------------------------------

def uploads_dir() -> Path:
    path = settings().ui.output_dir / "uploads"
    path.mkdir(parents=True, exist_ok=True)
    return path


def safe_filename(name: str) -> str:
    """A plain file name for an upload: no folders, no odd characters, a dataset extension."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).lstrip("._-")[-120:]
    suffix = Path(base).suffix.lower()
    if suffix not in DATASET_TYPES or not Path(base).stem:
        raise BackpropError("INPUT_UPLOAD_INVALID",
                            f"{name!r} is not a dataset file; allowed: {', '.join(DATASET_TYPES)}")
    return base


def save_upload(name: str, data: bytes) -> Path:
    """Store uploaded bytes under the uploads folder; refuses oversized or empty files."""
    limit_mb = settings().ui.max_upload_mb
    if len(data) > limit_mb * 1024 * 1024:
        raise BackpropError("INPUT_UPLOAD_TOO_LARGE",
                            f"{name} is {len(data) / 2**20:.1f} MB; the limit is {limit_mb} MB")
    if not data.strip():
        raise BackpropError("INPUT_UPLOAD_INVALID", f"{name} is empty")
    folder = uploads_dir().resolve()
    target = (folder / safe_filename(name)).resolve()
    if target.parent != folder:
        raise BackpropError("INPUT_PATH_FORBIDDEN", f"{name!r} would be written outside {folder}")
    partial = target.with_name(target.name + ".partial")
    partial.write_bytes(data)
    partial.replace(target)
    return target


def workspace_files() -> list[dict[str, str]]:
    """Datasets the pickers offer: uploads (newest first), then the repository's examples."""
    found: list[dict[str, str]] = []
    uploads = [p for p in uploads_dir().iterdir() if p.suffix.lower() in DATASET_TYPES]
    for path in sorted(uploads, key=lambda p: p.stat().st_mtime, reverse=True):
        found.append({"label": f"uploads/{path.name}", "path": str(path)})
    if EXAMPLES_DIR.is_dir():
        for path in sorted(EXAMPLES_DIR.glob("*.jsonl")):
            found.append({"label": f"examples/{path.name}", "path": str(path)})
    return found


# ---- engine work (subprocesses) -----------------------------------------------------------

def dataset_report(path: str, model: str | None) -> dict:
    return worker.dataset_report(path, model=model or None)


def plan(model: str, data: str, overrides: dict | None = None) -> dict:
    return worker.plan(model, data, overrides or None)


def start_run(model: str, data: str, name: str | None, overrides: dict) -> str:
    return worker.start_run(model, data, name=name or None, overrides=overrides,
                            home=settings().home)


def cancel_run(run_id: str) -> None:
    worker.cancel_run(run_id, home=settings().home)


def resume_run(run_id: str) -> str:
    return worker.resume_run(run_id, home=settings().home)
