"""An export as a run of its own: the request it is made from, and the worker's body.

`worker.start_export` checks the request (`check_request`) before anything is written,
creates the export run (`create_export`: kind "export", parent = the training run, config
= the request) and starts `python -m backpropagate_core.runs.worker --export EXPORT_RUN_ID`.
The worker calls `run_job`, which records RunStarted, the exporter's ExportProgress
events, then Finished (artifact: the exported file or folder) or Failed on the export
run, through the store sink: status, liveness, errors and progress are read like any
run's. The result (verification figures) and any Ollama registration go into the export
run's summary. `backprop export RUN` does the same in its own process (`export_here`).
The training run's status never changes; the exporter only adds the new file to its
list of exports (summary "exports", an artifact).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from pathlib import Path

from backpropagate_core.errors import BackpropError
from backpropagate_core.export.merged import ADAPTER_CONFIG
from backpropagate_core.runs import events as ev
from backpropagate_core.runs.layout import RunDir

KIND = "export"
"""The kind of an export's run in the store."""
_CHECKPOINT = re.compile(r"^checkpoint-\d+$")
_log = logging.getLogger("backpropagate.export")


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
    ollama_host: str | None = None
    """None: the configured Ollama server."""
    verify: bool = True
    """Compare the export with the trained model before keeping it."""

    def to_config(self) -> dict:
        """The export run's config: everything its worker needs."""
        return {"format": self.format, "quantization": self.quantization, "source": str(self.source),
                "source_label": self.source_label, "output_dir": str(self.output_dir),
                "ollama_name": self.ollama_name, "ollama_host": self.ollama_host, "verify": self.verify}

    @classmethod
    def of(cls, export_run) -> "Request":
        """The request an export run was created from."""
        c = export_run.config
        return cls(export_run.parent, Path(c["source"]), Path(c["output_dir"]), c["format"],
                   c.get("quantization"), c.get("source_label") or "", c.get("ollama_name"),
                   c.get("ollama_host"), c.get("verify", True))

    @property
    def title(self) -> str:
        return " ".join(filter(None, (self.format, self.quantization, "of", self.source_label)))


def checkpoints(run_dir: Path) -> list[str]:
    """Names of a run's complete checkpoints that hold an adapter, oldest first."""
    root = RunDir(Path(run_dir)).checkpoints
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _CHECKPOINT.match(p.name) and (p / ADAPTER_CONFIG).is_file()]
    return [p.name for p in sorted(found, key=lambda p: int(p.name.split("-")[1]))]


def final_adapter(run) -> Path:
    """Where a run's final adapter is (it may not exist: a cancelled run has none)."""
    return Path(run.artifacts.get("adapter") or RunDir(run.run_dir).adapter)


def check_request(run, format: str, quantization: str | None = None, checkpoint: str | None = None,
                  ollama_name: str | None = None, ollama_host: str | None = None) -> Request:
    """Everything that can be checked before a process starts: options, the adapter
    folder, the Ollama name. A checkpoint's exports go to `exports/<checkpoint>/`, so they
    never replace the final adapter's."""
    from backpropagate_core.export.exporter import check_options
    from backpropagate_core.export.ollama import check_name

    fmt, quant = check_options(format, quantization)
    if run.kind == KIND:
        raise BackpropError("INPUT_EXPORT_SOURCE_INVALID", f"run {run.id[:8]} is an export, not a training run",
                            hint=f"Export its training run {str(run.parent)[:8]} instead.")
    if ollama_name:
        if fmt != "gguf":
            raise BackpropError("INPUT_EXPORT_OPTION_INVALID", "Ollama registration needs the gguf format")
        check_name(ollama_name)
    if checkpoint:
        if not _CHECKPOINT.match(checkpoint):
            raise BackpropError("INPUT_EXPORT_SOURCE_INVALID", f"{checkpoint!r} is not a checkpoint name",
                                hint="Pick one of the run's checkpoints, e.g. checkpoint-20.")
        folder = RunDir(run.run_dir)
        source, output, label = folder.checkpoint(checkpoint), folder.exports / checkpoint, checkpoint
    else:
        source, output, label = final_adapter(run), RunDir(run.run_dir).exports, "final adapter"
    if not (source / ADAPTER_CONFIG).is_file():
        raise BackpropError("INPUT_EXPORT_SOURCE_INVALID",
                            f"run {run.id[:8]} ({run.status}) has no {label} at {source}",
                            hint="Export a finished run, or one of its checkpoints.")
    return Request(run.id, source, output, fmt, quant, label, ollama_name or None, ollama_host or None)


def active_export(store, run_id: str):
    """The run's export that is queued or running, if any; dead workers' exports are
    marked interrupted first, so a killed export does not block the next one."""
    store.reap_dead()
    return next((child for child in store.list(kind=KIND, parent=run_id) if child.active), None)


def create_export(store, run, request: Request):
    """The queued export run of `run` for a checked request; one export per run at a time."""
    busy = active_export(store, run.id)
    if busy:
        raise BackpropError("STATE_RUN_ACTIVE", f"run {run.id[:8]} is already being exported "
                                                f"({Request.of(busy).title}, export run {busy.id[:8]})",
                            hint="Wait for that export to finish; the Export page shows its progress.")
    return store.create_run(config=request.to_config(), model=run.model, dataset=run.dataset,
                            name=f"{run.name or run.id[:8]} · {request.title}", kind=KIND, parent=run.id)


def run_job(store, export_id: str) -> int:
    """The export worker's body: `run_export`, with every failure recorded on the export
    run as a coded error; returns the process exit code."""
    try:
        run_export(store, export_id)
        return 0
    except BackpropError as err:
        return err.exit_code  # run_export recorded it
    except Exception as err:  # noqa: BLE001 - the export worker's outer edge: record a coded failure
        _log.error("export failed", exc_info=err)
        from backpropagate_core import memory_limit

        coded = memory_limit.coded(err) or BackpropError("RUNTIME_UNEXPECTED", f"{type(err).__name__}: {err}")
        store.record(ev.Failed(export_id, code=coded.code, message=coded.message, hint=coded.hint))
        return coded.exit_code


def run_export(store, export_id: str, on_progress=None):
    """Export in this process as the export run's config asks, then register with Ollama
    if it names a model, recording it all on the export run: RunStarted, ExportProgress,
    then Finished (the result and registration in its summary) or Failed. Returns
    (ExportResult, summary); a coded error is recorded, then raised. `on_progress` also
    gets each progress event (the CLI's progress bar)."""
    from backpropagate_core.export import export_model

    export = store.get(export_id)
    request = Request.of(export)
    sink = store.sink()

    def progress(event: ev.Event) -> None:
        # The exporter names the training run in its events; here they belong to the export.
        event = replace(event, run_id=export.id)
        sink(event)
        if on_progress is not None:
            on_progress(event)

    sink(ev.RunStarted(export.id, config=export.config))
    try:
        result = export_model(request.source, format=request.format, quantization=request.quantization,
                              output_dir=request.output_dir, verify=request.verify, on_progress=progress)
    except BackpropError as err:
        sink(ev.Failed(export.id, code=err.code, message=err.message, hint=err.hint))
        raise
    summary: dict = {"result": result.to_dict()}
    if request.ollama_name:
        summary["ollama"], summary["ollama_error"] = _register(progress, export.id, result.path,
                                                               request.ollama_name, request.ollama_host)
    # The summary first, so whoever sees the run completed also sees its result.
    store.merge_summary(export.id, **summary)
    sink(ev.Finished(export.id, final_loss=None, steps=0, artifacts={"export": str(result.path)},
                     wall_s=result.seconds))
    return result, summary


def export_here(store, run, request: Request, on_progress=None):
    """`backprop export RUN`: create the export run, claim it for this process and export
    here (a killed CLI shows as interrupted, like a killed worker); returns (export run
    id, ExportResult)."""
    export = create_export(store, run, request)
    store.claim(export.id)
    result, _summary = run_export(store, export.id, on_progress)
    return export.id, result


def _register(sink, run_id: str, path: Path, name: str, host: str | None) -> tuple[dict, dict]:
    """(registration, {}) or ({}, coded error): a daemon that is down leaves the export good."""
    from dataclasses import asdict

    from backpropagate_core.export import register_with_ollama

    def status(text: str) -> None:
        sink(ev.ExportProgress(run_id, stage="ollama", message=text))

    status(f"registering {name}")
    try:
        return asdict(register_with_ollama(path, name, host=host, on_status=status)), {}
    except BackpropError as err:
        return {}, err.to_dict()
