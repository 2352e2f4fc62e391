"""What the app asks of the engine: settings, the run store, launchers, presets, files.

Everything here is import-light, so the UI server never loads torch: training and exports
run in worker processes (`backpropagate_core.runs.worker`), and dataset reports, plans and
chat answers come, typed, from the long-lived engine helper (`backpropagate_core.runs.client`),
which keeps tokenizers and models loaded between questions. The blocking calls (SQLite,
the helper) are plain functions; the States run them with `asyncio.to_thread` so the
event loop stays free.
"""

from __future__ import annotations

import os
from pathlib import Path

from backpropagate_app.server import limits
from backpropagate_core.model import presets
from backpropagate_core.serve import sandbox
from backpropagate_core.runs import worker
from backpropagate_core.runs.protocol import ChatAnswer, DatasetReport, Plan
from backpropagate_core.config import Settings, load_settings
from backpropagate_core.errors import BackpropError
from backpropagate_core.runs.store import RunStore

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLES_DIR = REPO_ROOT / "examples"
DATASET_TYPES = (".jsonl", ".json", ".csv", ".parquet")
CUSTOM_MODEL = "custom"
"""Model picker value meaning "use the text typed in the custom model box"."""

_stores: dict[Path, RunStore] = {}
_settings: tuple[tuple, Settings] | None = None


def settings() -> Settings:
    """The settings, parsed again only when what they come from changed: the
    `BACKPROPAGATE_*` environment or the `.env` file. Open pages ask several times a
    second, and a parse costs milliseconds of the CPU that training is using."""
    global _settings
    try:
        env_file = Path(".env").stat()
        dotenv = (env_file.st_mtime_ns, env_file.st_size)
    except OSError:
        dotenv = None
    key = (os.getcwd(), dotenv, tuple(sorted((k, v) for k, v in os.environ.items() if k.upper().startswith("BACKPROPAGATE_"))))
    if _settings is None or _settings[0] != key:
        _settings = (key, load_settings())
    return _settings[1]


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
             "label": f"{p.name} · {p.params_b:.3g}B · {p.vram_gb:g} GB VRAM "
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
    # The output folder is checked on every use: never a system or credential location.
    path = sandbox.resolve_output_dir(settings().ui.output_dir, create=True) / "uploads"
    path.mkdir(parents=True, exist_ok=True)
    return path


def workspace_path(path: str) -> str:
    """`path` if it names a dataset file in the workspace, resolved; INPUT_PATH_FORBIDDEN
    otherwise. The browser sends paths, so they are never trusted: only a regular file (no
    folder, which `datasets` metadata inside could point anywhere, and no symlink) directly
    in the uploads folder or anywhere in the repository's examples."""
    for root, direct in ((uploads_dir(), True), (EXAMPLES_DIR, False)):
        try:
            sandbox.inside(root, path)
        except BackpropError:
            continue
        if os.path.lexists(Path(root) / Path(path).expanduser()):  # a dangling link is there too
            return str(sandbox.dataset_file(root, path, direct=direct))
    raise BackpropError("INPUT_PATH_FORBIDDEN", f"{path!r} is not in the workspace (uploads or examples)",
                        hint="Pick a file from the list, or upload it on the Dataset page.")


def safe_filename(name: str) -> str:
    """A plain file name for an upload: no folders, no odd characters, a dataset extension."""
    return sandbox.sanitize_filename(name, DATASET_TYPES)


def upload_file(name: str) -> sandbox.StreamedFile:
    """Where an upload is streamed to: a private partial file in the uploads folder, capped
    at the upload limit, checked by content and renamed into place by `finish()`."""
    return sandbox.StreamedFile(uploads_dir(), safe_filename(name), settings().ui.max_upload_mb * 1024 * 1024)


def save_upload(name: str, data: bytes) -> Path:
    """Store uploaded bytes under the uploads folder; refuses oversized or empty files."""
    limit_mb = settings().ui.max_upload_mb
    if len(data) > limit_mb * 1024 * 1024:
        raise BackpropError("INPUT_UPLOAD_TOO_LARGE",
                            f"{name} is {len(data) / 2**20:.1f} MB; the limit is {limit_mb} MB")
    if not data.strip():
        raise BackpropError("INPUT_UPLOAD_INVALID", f"{name} is empty")
    filename = safe_filename(name)
    sandbox.sniff_upload(data, Path(filename).suffix)  # by content, not by name
    return sandbox.write_bytes(uploads_dir(), filename, data)


def workspace_files() -> list[dict[str, str]]:
    """Datasets the pickers offer: uploads (newest first), then the repository's examples."""
    found: list[dict[str, str]] = []
    # Only plain files: the app never writes links, so a symlink here was planted (and may
    # point outside the sandbox or nowhere).
    uploads = [p for p in uploads_dir().iterdir()
               if p.suffix.lower() in DATASET_TYPES and not p.is_symlink() and p.is_file()]
    for path in sorted(uploads, key=lambda p: p.stat().st_mtime, reverse=True):
        found.append({"label": f"uploads/{path.name}", "path": str(path)})
    if EXAMPLES_DIR.is_dir():
        for path in sorted(EXAMPLES_DIR.glob("*.jsonl")):
            found.append({"label": f"examples/{path.name}", "path": str(path)})
    return found


# ---- engine work (helper, workers) --------------------------------------------------------

def dataset_report(path: str, model: str | None) -> DatasetReport:
    """The report on a workspace dataset; token statistics with `model`'s tokenizer."""
    return worker.dataset_report(workspace_path(path), model=model or None)


def plan(model: str, data: str, overrides: dict | None = None) -> Plan:
    """The settings a run would use on a workspace dataset, and why."""
    return worker.plan(model, workspace_path(data), overrides or None)


def start_run(model: str, data: str, name: str | None, overrides: dict) -> str:
    data = workspace_path(data)
    limits.allow("start")  # each run is a process training on this machine
    _room_for_worker()
    return worker.start_run(model, data, name=name or None, overrides=overrides, home=settings().home)


def start_multi_run(model: str, data: str, name: str | None, fresh: bool, options: dict) -> str:
    """Start a campaign's worker (LoRA runs over successive chunks of `data`); returns its
    run id. `options` are the campaign settings (`pages.multirun.view.campaign_options`)."""
    data = workspace_path(data)
    limits.allow("start")  # a campaign is a process training on this machine, like a run
    _room_for_worker()
    return worker.start_multi_run(model, data, name=name or None, fresh=fresh, home=settings().home,
                                  **options)


def _room_for_worker() -> None:
    # Counted from the store, so runs started from the CLI or another tab count too; runs
    # whose worker died are marked failed first, so they never block a new start.
    runs = store()
    runs.reap_dead()
    limits.room_for_worker(sum(1 for run in runs.list() if run.active))


def cancel_run(run_id: str) -> None:
    worker.cancel_run(run_id, home=settings().home)


def resume_run(run_id: str) -> str:
    limits.allow("start")
    _room_for_worker()
    return worker.resume_run(run_id, home=settings().home)


def start_export(run_id: str, fmt: str, quantization: str | None, checkpoint: str | None,
                 ollama_name: str | None) -> str:
    """Start exporting a training run (its final adapter, or `checkpoint`) in a worker;
    returns the export run's id (a run of kind "export" whose parent is `run_id`)."""
    limits.allow("start")  # an export is a process working this machine hard, like a run
    _room_for_worker()
    # The Ollama host is the server's setting: the browser never chooses where files are uploaded.
    return worker.start_export(run_id, fmt, quantization, checkpoint=checkpoint, ollama_name=ollama_name,
                               home=settings().home)


# ---- chat feedback ------------------------------------------------------------------------

def record_feedback(run_id: str, prompt: str, answer: str, verdict: str, edited: str | None = None,
                    source: str | None = None) -> dict:
    """Save a 👍, 👎 or edit on the fine-tuned model's answer; returns `feedback_status`."""
    from backpropagate_core.data import feedback

    run = store().get(run_id)
    feedback.record(run.run_dir, [{"role": "user", "content": prompt}], answer, verdict,
                    edited=edited, source=source or run.id)
    return feedback_status(run.id)


def feedback_status(run_id: str) -> dict:
    """{"pairs": how many preference pairs the run's feedback makes, "message": why that is
    not enough yet ("" when it is)}."""
    from backpropagate_core.data import feedback

    pairs = feedback.pairs(feedback.items(store().get(run_id).run_dir))
    return {"pairs": len(pairs), "message": feedback.shortfall(pairs) or ""}


def train_on_feedback(run_id: str) -> str:
    """Write the run's feedback pairs as a dataset in the uploads folder and start a DPO run
    from the run's adapter on them; returns the new run's id."""
    from backpropagate_core.data import feedback

    run = store().get(run_id)
    pairs = feedback.pairs(feedback.items(run.run_dir))
    feedback.require_enough(pairs)
    # Rewritten on every press: it is this run's feedback as it stands, shown among the uploads.
    path = feedback.write_dataset(pairs, uploads_dir() / f"feedback-{run.id[:8]}.jsonl", overwrite=True)
    name = f"feedback on {run.name or run.id[:8]}"
    return start_run("", str(path), name, {"method": "dpo", "from_run": run.id})


def chat_once(target: str, prompt: str, gguf: str | None, max_new_tokens: int,
              on_partial=None) -> ChatAnswer:
    """Greedy answers to one question from the base model, from a run's adapter (or
    checkpoint folder) and, when `gguf` is given, from that GGUF in llama.cpp, side by side;
    the engine helper keeps the model loaded for the next question."""
    return worker.chat_once(target, [{"role": "user", "content": prompt}], gguf=gguf,
                            max_new_tokens=max_new_tokens, compare=gguf is not None, base=True,
                            on_partial=on_partial)
