"""Start engine work in separate OS processes, and the worker process's entry point.

The launcher functions here are import-light (no torch): the UI server and the CLI call
them to start, stop and resume runs. A run's worker is `python -m
backpropagate_core.runs.worker RUN_ID`, which calls the same `execute_run` as `backprop
train`, so a crash, an out-of-memory kill or `kill -9` only ends that process; the run
store then shows the run as interrupted (see `RunStore.reap_dead`). An export is a run of
its own (kind "export", its parent the training run) with the worker `python -m
backpropagate_core.runs.worker --export EXPORT_RUN_ID` (see `export.jobs`). Plans, dataset reports
and chat answers come from the long-lived engine helper (`runs.client`).

Stopping is a flag file (`<run_dir>/CANCEL`) the worker polls after every step, so it
works the same on Windows, where POSIX signals are not available.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from backpropagate_core import logs, memory_limit, platform_support
from backpropagate_core.errors import BackpropError
from backpropagate_core.runs import client
from backpropagate_core.runs import events as ev
from backpropagate_core.runs.layout import RunDir
from backpropagate_core.runs.protocol import ChatAnswer, DatasetReport, Plan
from backpropagate_core.runs.store import RunStore

_children: list[subprocess.Popen] = []
_export_lock = threading.Lock()
"""Held from the busy check until the export run exists, so two clicks cannot start two exports."""


def _spawn(args: list[str], store: RunStore, log_path: Path) -> subprocess.Popen:
    env = {**os.environ, "BACKPROPAGATE_HOME": str(store.home), "PYTHONUNBUFFERED": "1"}
    kwargs: dict[str, Any] = platform_support.worker_popen_kwargs()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "backpropagate_core.runs.worker", *args],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=os.getcwd(), **kwargs)
    _children.append(proc)
    _collect_exited()
    return proc


def _collect_exited() -> None:
    """Wait on finished children so they do not linger as zombies."""
    for proc in list(_children):
        if proc.poll() is not None:
            _children.remove(proc)


def start_run(model: str | None, data: str, *, name: str | None = None,
              overrides: dict | None = None, home: str | Path | None = None) -> str:
    """Validate the config, record a queued run and start its worker; returns the run id."""
    from backpropagate_core.training.request import create_run

    store = RunStore(home)
    run = create_run(store, model, data, name=name, overrides=overrides)
    return _start_worker(store, run, [run.id])


def start_multi_run(model: str | None, data: str, *, num_runs: int, steps_per_run: int,
                    samples_per_run: int | None = None, merge_mode: str = "slao", schedule: str = "inv_sqrt",
                    overrides: dict | None = None, name: str | None = None, fresh: bool = False,
                    home: str | Path | None = None, **options: Any) -> str:
    """Validate and record a queued multi-run campaign and start its worker; returns the
    run id. `options`: lambda_c, replay_fraction, val_per_chunk (see `campaign_state`)."""
    from backpropagate_core.training.request import create_run

    store = RunStore(home)
    campaign = dict(num_runs=num_runs, steps_per_run=steps_per_run, samples_per_run=samples_per_run,
                    merge_mode=merge_mode, schedule=schedule, **options)
    run = create_run(store, model, data, name=name, overrides=overrides, campaign=campaign, fresh=fresh)
    return _start_worker(store, run, [run.id])


def _start_worker(store: RunStore, run, args: list[str]) -> str:
    proc = _spawn(args, store, RunDir(run.run_dir).worker_log)
    store.claim(run.id, pid=proc.pid)
    return run.id


def resume_run(run_id: str, *, home: str | Path | None = None) -> str:
    """Start a worker that continues an interrupted, cancelled or failed run."""
    store = RunStore(home)
    store.reap_dead()
    run = store.get(run_id)
    if run.active:
        raise BackpropError("STATE_RUN_ACTIVE", f"run {run.id[:8]} is already {run.status}")
    if run.kind == "export":
        raise BackpropError("STATE_RUN_NOT_FOUND", f"run {run.id[:8]} is an export, which cannot be resumed",
                            hint=f"Export its training run {str(run.parent)[:8]} again: `backprop export "
                                 f"{str(run.parent)[:8]}` or the Export page.")
    if run.kind not in ("train", "multi_run"):
        raise BackpropError("STATE_RUN_NOT_FOUND", f"run {run.id[:8]} is a {run.kind}, not a training run")
    store.update(run.id, status="queued")
    return _start_worker(store, run, [run.id, "--resume"])


def cancel_run(run_id: str, *, home: str | Path | None = None) -> None:
    """Ask a run to stop: it writes a checkpoint, then ends as cancelled."""
    store = RunStore(home)
    run = store.get(run_id)
    if run.kind == "export":
        raise BackpropError("STATE_RUN_NOT_FOUND", f"run {run.id[:8]} is an export, which cannot be stopped halfway",
                            hint="It ends by itself; a half-written export never replaces a finished one.")
    if not run.active:
        return
    RunDir(run.run_dir).cancel_flag.touch()


def start_export(source_run_id: str, format: str, quantization: str | None = None, *,
                 checkpoint: str | None = None, ollama_name: str | None = None,
                 ollama_host: str | None = None, home: str | Path | None = None) -> str:
    """Check the options, create an export run (kind "export", parent the training run)
    and start its worker; returns the export run's id. It exports the run's final adapter
    (or `checkpoint`); with `ollama_name` the GGUF is registered afterwards. Its status,
    progress and result are the export run's, read from the store like any run's; one
    export per training run at a time."""
    from backpropagate_core.export import jobs

    store = RunStore(home)
    run = store.get(source_run_id)
    request = jobs.check_request(run, format, quantization, checkpoint, ollama_name, ollama_host)
    with _export_lock:
        export = jobs.create_export(store, run, request)
    try:
        return _start_worker(store, export, ["--export", export.id])
    except OSError as err:
        # A queued run without a worker would block the next export for good.
        store.record(ev.Failed(export.id, code="RUNTIME_UNEXPECTED", message=f"starting the worker: {err}"))
        raise BackpropError("RUNTIME_UNEXPECTED", f"could not start the export worker: {err}") from err


def chat_once(source: str, messages: list[dict], gguf: str | None = None,
              max_new_tokens: int = 128, compare: bool = True, base: bool = False,
              on_partial=None) -> ChatAnswer:
    """Greedy answers to the last turn of `messages` from the trained model and, when the
    run has a GGUF export (or `gguf` names one), from llama.cpp; `compare=False`: the
    trained model only; `base`: the base model's answer too. Answered by the engine
    helper, which keeps the model loaded for the next question."""
    return client.chat(source, messages, gguf=gguf, max_new_tokens=max_new_tokens, compare=compare,
                       base=base, on_partial=on_partial)


def dataset_report(path: str, model: str | None = None, max_seq_len: int | None = None) -> DatasetReport:
    """The dataset report (as in `backprop data report --json`), from the engine helper;
    `model` None skips token statistics."""
    return client.dataset_report(path, model=model, max_seq_len=max_seq_len)


def plan(model: str | None, data: str, overrides: dict | None = None) -> Plan:
    """Resolved defaults with reasons for this model and dataset, without training."""
    return client.plan(model, data, overrides)


def main(argv: list[str] | None = None) -> int:
    """Worker process: train one run (or multi-run campaign) from the store, then exit 0
    (done/cancelled) or the error's exit code."""
    import argparse

    given = sys.argv[1:] if argv is None else argv
    if given[:1] == ["--export"]:
        return _export_main(given[1:])
    parser = argparse.ArgumentParser(prog="backpropagate_core.runs.worker")
    parser.add_argument("run_id")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--console", action="store_true",
                        help="Also print progress here (rank 0 of `backprop train --num-processes`).")
    args = parser.parse_args(argv)

    # The run id comes first in the worker's output, before torch loads, so a crash in
    # imports can still be matched to its run.
    logs.setup_logging(echo_events=not args.console)
    with logs.bind_run(args.run_id):
        logs.get_logger(__name__).info("run_started run_id=%s resume=%s pid=%s", args.run_id,
                                       args.resume, os.getpid())
        try:
            _limit_memory()
            from backpropagate_core.training.multirun import execute

            execute(args.run_id, RunStore(), resume=args.resume, extra_sinks=_console_sinks(args.console))
            return 0
        except BackpropError as err:
            print(f"[{err.code}] {err.message}", file=sys.stderr)
            return err.exit_code


def _export_main(argv: list[str]) -> int:
    """Export worker: `--export EXPORT_RUN_ID`, as `start_export` builds it; what to export
    is the export run's config, and everything is recorded on that run (see export.jobs)."""
    import argparse

    parser = argparse.ArgumentParser(prog="backpropagate_core.runs.worker --export")
    parser.add_argument("export_run_id")
    args = parser.parse_args(argv)

    logs.setup_logging()
    with logs.bind_run(args.export_run_id):
        logs.get_logger(__name__).info("export_started run_id=%s pid=%s", args.export_run_id, os.getpid())
        _limit_memory()
        from backpropagate_core.export import jobs

        return jobs.run_job(RunStore(), args.export_run_id)


def _limit_memory() -> None:
    """Before torch loads: a worker the UI started runs under the address-space limit
    (`memory_limit`), so a memory bomb in its input fails this run, not the machine."""
    limit = memory_limit.apply_under_ui()
    if limit:
        logs.get_logger(__name__).info("memory_limit bytes=%s", limit)


def _console_sinks(wanted: bool) -> list:
    from backpropagate_core.training import distributed

    if not (wanted and distributed.is_main()):
        return []
    from rich.console import Console

    from backpropagate_core.runs.console import ConsoleSink

    return [ConsoleSink(Console())]


if __name__ == "__main__":
    sys.exit(main())
