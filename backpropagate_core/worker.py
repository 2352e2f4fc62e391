"""Start engine work in separate OS processes, and the worker process's entry point.

The launcher functions here are import-light (no torch): the UI server and the CLI call
them to start, stop and resume runs. A run's worker is `python -m
backpropagate_core.worker RUN_ID`, which calls the same `execute_run` as `backprop
train`, so a crash, an out-of-memory kill or `kill -9` only ends that process; the run
store then shows the run as interrupted (see `RunStore.reap_dead`). An export's worker is
`python -m backpropagate_core.worker --export RUN_ID ...` (see `export.jobs`); chat
answers come from a one-shot `backprop chat --json` subprocess.

Stopping is a flag file (`<run_dir>/CANCEL`) the worker polls after every step, so it
works the same on Windows, where POSIX signals are not available.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

from backpropagate_core import logs, platform_support
from backpropagate_core.errors import BackpropError
from backpropagate_core.runs import RunStore

CANCEL_FLAG = "CANCEL"
_children: list[subprocess.Popen] = []
_export_lock = threading.Lock()
"""Held from the busy check to export_started, so two clicks cannot start two exports."""


def _spawn(args: list[str], store: RunStore, log_path: Path) -> subprocess.Popen:
    env = {**os.environ, "BACKPROPAGATE_HOME": str(store.home), "PYTHONUNBUFFERED": "1"}
    kwargs: dict[str, Any] = platform_support.worker_popen_kwargs()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "backpropagate_core.worker", *args],
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
    from backpropagate_core.model import resolve_model
    from backpropagate_core.train import build_config

    config = build_config(model, data, name, **(overrides or {}))
    if not Path(config.data).expanduser().exists():
        raise BackpropError("INPUT_DATASET_NOT_FOUND", f"{config.data} does not exist")
    resolve_model(config.model)
    config.data = str(Path(config.data).expanduser().resolve())
    store = RunStore(home)
    run = store.create_run(config=config.model_dump(mode="json"), model=config.model,
                           dataset=config.data, name=name)
    proc = _spawn([run.id], store, run.run_dir / "worker.log")
    store.claim(run.id, pid=proc.pid)
    return run.id


def start_multi_run(model: str | None, data: str, *, num_runs: int, steps_per_run: int,
                    samples_per_run: int, merge_mode: str = "slao", schedule: str = "inv_sqrt",
                    overrides: dict | None = None, name: str | None = None, fresh: bool = False,
                    home: str | Path | None = None, **options: Any) -> str:
    """Validate and record a queued multi-run campaign and start its worker; returns the
    run id. `options`: lambda_c, replay_fraction, val_per_chunk (see `multirun`)."""
    from backpropagate_core import multirun
    from backpropagate_core.model import resolve_model
    from backpropagate_core.train import build_config

    config = build_config(model, data, name, **(overrides or {}))
    settings = multirun.campaign_settings(num_runs=num_runs, steps_per_run=steps_per_run,
                                          samples_per_run=samples_per_run, merge_mode=merge_mode,
                                          schedule=schedule, **options)
    if not Path(config.data).expanduser().exists():
        raise BackpropError("INPUT_DATASET_NOT_FOUND", f"{config.data} does not exist")
    resolve_model(config.model)
    store = RunStore(home)
    run = multirun.open_campaign(store, config, settings, name=name, fresh=fresh)
    proc = _spawn([run.id], store, run.run_dir / "worker.log")
    store.claim(run.id, pid=proc.pid)
    return run.id


def resume_run(run_id: str, *, home: str | Path | None = None) -> str:
    """Start a worker that continues an interrupted, cancelled or failed run."""
    store = RunStore(home)
    store.reap_dead()
    run = store.get(run_id)
    if run.active:
        raise BackpropError("STATE_RUN_ACTIVE", f"run {run.id[:8]} is already {run.status}")
    if run.kind not in ("train", "multi_run"):
        raise BackpropError("STATE_RUN_NOT_FOUND", f"run {run.id[:8]} is a {run.kind}, not a training run")
    store.update(run.id, status="queued")
    proc = _spawn([run.id, "--resume"], store, run.run_dir / "worker.log")
    store.claim(run.id, pid=proc.pid)
    return run.id


def cancel_run(run_id: str, *, home: str | Path | None = None) -> None:
    """Ask a run to stop: it writes a checkpoint, then ends as cancelled."""
    store = RunStore(home)
    run = store.get(run_id)
    if not run.active:
        return
    (run.run_dir / CANCEL_FLAG).touch()


def start_export(source_run_id: str, format: str, quantization: str | None = None, *,
                 checkpoint: str | None = None, ollama_name: str | None = None,
                 ollama_host: str | None = None, home: str | Path | None = None) -> str:
    """Check the options, start a worker exporting a run's final adapter (or `checkpoint`)
    and record export_started on the run; returns the job id that the job's export_done /
    export_failed event carries. Progress arrives as export_progress events on the run.
    One export per run at a time; with `ollama_name` the GGUF is registered afterwards."""
    from backpropagate_core.export import jobs

    store = RunStore(home)
    run = store.get(source_run_id)
    request = jobs.check_request(run, format, quantization, checkpoint, ollama_name)
    with _export_lock:
        busy = jobs.running_job(store, run.id)
        if busy:
            what = " ".join(filter(None, (busy["format"], busy.get("quantization"))))
            raise BackpropError("STATE_RUN_ACTIVE", f"run {run.id[:8]} is already being exported ({what})",
                                hint="Wait for that export to finish; the Export page shows its progress.")
        job = uuid.uuid4().hex[:12]
        args = ["--export", run.id, "--job", job, "--source", str(request.source),
                "--output", str(request.output_dir), "--format", request.format]
        for flag, value in (("--quantization", request.quantization), ("--ollama-name", request.ollama_name),
                            ("--ollama-host", ollama_host)):
            args += [flag, value] if value else []
        log = run.run_dir / "export.log"
        proc = _spawn(args, store, log)
        jobs.record_started(store, request, job, proc.pid, log)
    return job


def chat_once(source: str, messages: list[dict], gguf: str | None = None,
              max_new_tokens: int = 128, compare: bool = True) -> dict:
    """Greedy answers to the last turn of `messages` from the trained model and, when the
    run has a GGUF export (or `gguf` names one), from llama.cpp; out of process, as
    `backprop chat SOURCE --messages ... --json`. `compare=False`: the trained model only.
    Returns {"answers": {"transformers": {text, tokens, seconds}, "llama.cpp": ...},
    "gguf": path or None, "identical": bool or None}."""
    args = ["chat", str(source), "--messages", json.dumps(messages), "--json",
            "--max-new-tokens", str(max_new_tokens)]
    if gguf:
        args += ["--gguf", str(gguf)]
    if not compare:
        args.append("--no-gguf")
    return _engine_json(args)


def _engine_json(args: list[str], timeout: float = 600) -> dict:
    """Run a `backprop ... --json` command in a subprocess and parse its output."""
    proc = subprocess.run([sys.executable, "-m", "backpropagate_core.cli.run", *args],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "BACKPROPAGATE_LOG_JSON": "false"})
    if proc.returncode == 0:
        return json.loads(proc.stdout)
    try:
        err = json.loads(proc.stdout)["error"]
    except (ValueError, KeyError, TypeError):
        raise BackpropError("RUNTIME_UNEXPECTED", (proc.stderr or proc.stdout).strip()[-500:]) from None
    raise BackpropError(err["code"], err["message"], err.get("hint"))


def dataset_report(path: str, model: str | None = None, max_seq_len: int | None = None) -> dict:
    """The dataset report (as in `backprop data report --json`), computed out of process."""
    args = ["data", "report", str(path), "--json", "--skip-bad-lines", "--model", model or "none"]
    if max_seq_len:
        args += ["--max-seq-len", str(max_seq_len)]
    return _engine_json(args)


def plan(model: str | None, data: str, overrides: dict | None = None) -> dict:
    """Resolved defaults with reasons for this model and dataset, without training."""
    args = ["plan", "--data", str(data), "--json"]
    if model:
        args += ["--model", model]
    if overrides:
        args += ["--overrides", json.dumps(overrides)]
    return _engine_json(args)


def main(argv: list[str] | None = None) -> int:
    """Worker process: train one run (or multi-run campaign) from the store, then exit 0
    (done/cancelled) or the error's exit code."""
    import argparse

    given = sys.argv[1:] if argv is None else argv
    if given[:1] == ["--export"]:
        return _export_main(given[1:])
    parser = argparse.ArgumentParser(prog="backpropagate_core.worker")
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
            store = RunStore()
            if store.get(args.run_id).kind == "multi_run":
                from backpropagate_core.multirun import execute_campaign as execute
                execute(args.run_id, store, resume=args.resume)
                return 0
            from backpropagate_core.train import execute_run

            execute_run(args.run_id, store, resume=args.resume, extra_sinks=_console_sinks(args.console))
            return 0
        except BackpropError as err:
            print(f"[{err.code}] {err.message}", file=sys.stderr)
            return err.exit_code


def _export_main(argv: list[str]) -> int:
    """Export worker: `--export RUN_ID --job JOB --source DIR --output DIR --format F ...`,
    as `start_export` builds it; the outcome is recorded on the run (see export.jobs)."""
    import argparse

    parser = argparse.ArgumentParser(prog="backpropagate_core.worker --export")
    parser.add_argument("run_id")
    for flag in ("--job", "--source", "--output", "--format"):
        parser.add_argument(flag, required=True)
    for flag in ("--quantization", "--ollama-name", "--ollama-host"):
        parser.add_argument(flag)
    args = parser.parse_args(argv)

    logs.setup_logging()
    with logs.bind_run(args.run_id):
        logs.get_logger(__name__).info("export_started run_id=%s job=%s format=%s quantization=%s pid=%s",
                                       args.run_id, args.job, args.format, args.quantization, os.getpid())
        from backpropagate_core.export import jobs

        return jobs.run_job(RunStore(), args.run_id, args.job, Path(args.source), Path(args.output),
                            args.format, args.quantization, args.ollama_name, args.ollama_host)


def _console_sinks(wanted: bool) -> list:
    from backpropagate_core import distributed

    if not (wanted and distributed.is_main()):
        return []
    from rich.console import Console

    from backpropagate_core.console import ConsoleSink

    return [ConsoleSink(Console())]


if __name__ == "__main__":
    sys.exit(main())
