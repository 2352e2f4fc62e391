"""An export run in a process of its own: what it records on its run, and its body.

`worker.start_export` checks the request (`check_request`), starts `python -m
backpropagate_core.worker --export ...` and records `ExportStarted` with the worker's
pid. The worker calls `run_job`: the exporter's `ExportProgress` events, then
`ExportDone` (the result and any Ollama registration) or `ExportFailed` (code, message,
hint). All of them go into the run store under the run that was exported, so every
reader (the UI, a second tab, a restarted server) follows the same job. None of them
changes the run's status: a failed export does not make the run failed.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from backpropagate_core import events as ev
from backpropagate_core.errors import BackpropError
from backpropagate_core.export.exporter import ExportProgress
from backpropagate_core.export.merged import ADAPTER_CONFIG

EVENT_TYPES = ("export_started", "export_progress", "export_done", "export_failed")
CHECKPOINTS_DIR = "checkpoints"
EXPORTS_DIR = "exports"
_CHECKPOINT = re.compile(r"^checkpoint-\d+$")
_log = logging.getLogger("backpropagate.export")


@dataclass
class ExportStarted(ev.Event):
    job: str
    """Shared by this job's started, done and failed events."""
    format: str
    quantization: str | None = None
    source: str = ""
    """"final adapter" or the checkpoint's name."""
    ollama_name: str | None = None
    pid: int | None = None
    pid_started: float | None = None
    """The worker's start time, so a reused pid is not taken for it."""
    log: str = ""
    """The worker's output file: the traceback of a crash is there."""


@dataclass
class ExportDone(ev.Event):
    job: str
    result: dict
    """ExportResult.to_dict(): path, size, verification figures, ..."""
    ollama: dict = field(default_factory=dict)
    """The Ollama registration (name, host, run_command) when one was asked for."""
    ollama_error: dict = field(default_factory=dict)
    """{code, message, hint} when registering failed; the export itself is good."""


@dataclass
class ExportFailed(ev.Event):
    job: str
    code: str
    message: str
    hint: str = ""


ev.register_event("export_started", ExportStarted)
ev.register_event("export_done", ExportDone)
ev.register_event("export_failed", ExportFailed)


@dataclass
class Request:
    """A checked export request: which adapter folder, where to, in which format."""
    run_id: str
    source: Path
    output_dir: Path
    format: str
    quantization: str | None
    source_label: str
    ollama_name: str | None = None


def checkpoints(run_dir: Path) -> list[str]:
    """Names of a run's complete checkpoints that hold an adapter, oldest first."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _CHECKPOINT.match(p.name) and (p / ADAPTER_CONFIG).is_file()]
    return [p.name for p in sorted(found, key=lambda p: int(p.name.split("-")[1]))]


def final_adapter(run) -> Path:
    """Where a run's final adapter is (it may not exist: a cancelled run has none)."""
    return Path(run.artifacts.get("adapter") or run.run_dir / "adapter")


def check_request(run, format: str, quantization: str | None = None, checkpoint: str | None = None,
                  ollama_name: str | None = None) -> Request:
    """Everything that can be checked before a process starts: options, the adapter
    folder, the Ollama name. A checkpoint's exports go to `exports/<checkpoint>/`, so they
    never replace the final adapter's."""
    from backpropagate_core.export.exporter import check_options
    from backpropagate_core.export.ollama import check_name

    fmt, quant = check_options(format, quantization)
    if ollama_name:
        if fmt != "gguf":
            raise BackpropError("INPUT_EXPORT_OPTION_INVALID", "Ollama registration needs the gguf format")
        check_name(ollama_name)
    if checkpoint:
        if not _CHECKPOINT.match(checkpoint):
            raise BackpropError("INPUT_EXPORT_SOURCE_INVALID", f"{checkpoint!r} is not a checkpoint name",
                                hint="Pick one of the run's checkpoints, e.g. checkpoint-20.")
        source, output, label = (run.run_dir / CHECKPOINTS_DIR / checkpoint,
                                 run.run_dir / EXPORTS_DIR / checkpoint, checkpoint)
    else:
        source, output, label = final_adapter(run), run.run_dir / EXPORTS_DIR, "final adapter"
    if not (source / ADAPTER_CONFIG).is_file():
        raise BackpropError("INPUT_EXPORT_SOURCE_INVALID",
                            f"run {run.id[:8]} ({run.status}) has no {label} at {source}",
                            hint="Export a finished run, or one of its checkpoints.")
    return Request(run.id, source, output, fmt, quant, label, ollama_name or None)


def record_started(store, request: Request, job: str, pid: int, log: Path) -> int:
    import psutil

    try:
        started = psutil.Process(pid).create_time()
    except psutil.Error:
        started = None
    return store.record(ExportStarted(request.run_id, job=job, format=request.format,
                                      quantization=request.quantization, source=request.source_label,
                                      ollama_name=request.ollama_name, pid=pid, pid_started=started,
                                      log=str(log)))


def worker_alive(started: dict) -> bool:
    """Whether the process an `export_started` event names is still running."""
    import psutil

    from backpropagate_core.runs import _process_alive

    return started.get("pid") is not None and _process_alive(psutil, started["pid"], started.get("pid_started"))


def running_job(store, run_id: str) -> dict | None:
    """The run's export in progress (its export_started event), if any: not ended, worker alive."""
    started: dict[str, dict] = {}
    ended: set[str] = set()
    for _row, event in store.events(run_id, types=("export_started", "export_done", "export_failed")):
        if event["type"] == "export_started":
            started[event["job"]] = event
        else:
            ended.add(event.get("job", ""))
    for job, event in reversed(started.items()):
        if job not in ended and worker_alive(event):
            return event
    return None


def run_job(store, run_id: str, job: str, source: Path, output_dir: Path, format: str,
            quantization: str | None, ollama_name: str | None = None,
            ollama_host: str | None = None) -> int:
    """The export worker's body: export, optionally register with Ollama, record the
    outcome on the run; returns the process exit code."""
    from backpropagate_core.export import export_model

    sink = store.sink()
    try:
        result = export_model(source, format=format, quantization=quantization, output_dir=output_dir,
                              on_progress=sink)
    except BackpropError as err:
        sink(ExportFailed(run_id, job=job, code=err.code, message=err.message, hint=err.hint))
        return err.exit_code
    except Exception as err:  # noqa: BLE001 - the export worker's outer edge: record a coded failure
        _log.error("export failed", exc_info=err)
        coded = BackpropError("RUNTIME_UNEXPECTED", f"{type(err).__name__}: {err}")
        sink(ExportFailed(run_id, job=job, code=coded.code, message=coded.message, hint=coded.hint))
        return coded.exit_code
    done = ExportDone(run_id, job=job, result=result.to_dict())
    if ollama_name:
        done.ollama, done.ollama_error = _register(sink, run_id, result.path, ollama_name, ollama_host)
    sink(done)
    return 0


def _register(sink, run_id: str, path: Path, name: str, host: str | None) -> tuple[dict, dict]:
    """(registration, {}) or ({}, coded error): a daemon that is down leaves the export good."""
    from dataclasses import asdict

    from backpropagate_core.export import register_with_ollama

    def status(text: str) -> None:
        sink(ExportProgress(run_id, stage="ollama", message=text))

    status(f"registering {name}")
    try:
        return asdict(register_with_ollama(path, name, host=host, on_status=status)), {}
    except BackpropError as err:
        return {}, err.to_dict()
