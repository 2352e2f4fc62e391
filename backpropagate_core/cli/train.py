"""Training commands: train, resume, cancel, plan, presets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from backpropagate_core.cli.app import app, console


@app.command()
def train(
    data: Path = typer.Option(..., "--data", "-d", help="Dataset file (jsonl/json/csv/parquet) or folder."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Preset, local folder, .gguf file or hub id (default: smollm2-135m)."),
    steps: Optional[int] = typer.Option(None, help="Optimizer steps (default: ~3 epochs)."),
    epochs: Optional[float] = typer.Option(None, help="Passes over the data when --steps is not given."),
    learning_rate: Optional[float] = typer.Option(None, "--lr", "--learning-rate", help="Peak learning rate (default: by model size)."),
    batch_size: Optional[int] = typer.Option(None, help="Examples per micro-batch, exactly (default: micro-batches filled to --batch-tokens)."),
    batch_tokens: Optional[int] = typer.Option(None, "--batch-tokens", help="Tokens per micro-batch when --batch-size is not given (default: by hardware)."),
    grad_accum: Optional[int] = typer.Option(None, help="Micro-batches per optimizer step."),
    max_seq_len: Optional[int] = typer.Option(None, help="Tokens per example (default: p99 of the data)."),
    lora_r: Optional[int] = typer.Option(None, "--lora-r", help="LoRA rank (default: 16)."),
    lora_alpha: Optional[int] = typer.Option(None, "--lora-alpha", help="LoRA alpha (default: 32)."),
    precision: Optional[str] = typer.Option(None, help="auto, bf16, fp16 or fp32."),
    load_in_4bit: bool = typer.Option(False, "--load-in-4bit", help="QLoRA (CUDA only)."),
    skip_bad_lines: bool = typer.Option(False, "--skip-bad-lines", help="Drop malformed lines and report them."),
    seed: Optional[int] = typer.Option(None, help="Random seed."),
    name: Optional[str] = typer.Option(None, help="A name for the run."),
    detach: bool = typer.Option(False, "--detach", help="Train in a background worker and return at once."),
    backend: Optional[str] = typer.Option(None, help="Training backend: auto (default), transformers or unsloth."),
    num_processes: Optional[int] = typer.Option(None, "--num-processes", help="Train on N processes (GPUs) through `accelerate launch`."),
    config_file: Optional[Path] = typer.Option(None, "--config-file", help="An accelerate config (DDP, FSDP, DeepSpeed, several machines)."),
    method: Optional[str] = typer.Option(None, help="sft, dpo or orpo (default: dpo for a preference dataset, else sft)."),
    beta: Optional[float] = typer.Option(None, help="DPO/ORPO strength (default: 0.1)."),
    sft_weight: Optional[float] = typer.Option(None, "--sft-weight", help="DPO: weight of learning the chosen answers too (default: 1.0; 0 = plain DPO)."),
    from_run: Optional[str] = typer.Option(None, "--from", help="Start from this earlier run's adapter (its model and LoRA shape)."),
) -> None:
    """Fine-tune a model with LoRA on a dataset. Ctrl-C stops after saving a checkpoint."""
    overrides = dict(steps=steps, epochs=epochs, learning_rate=learning_rate, batch_size=batch_size,
                     batch_tokens=batch_tokens, grad_accum=grad_accum, max_seq_len=max_seq_len, r=lora_r, alpha=lora_alpha,
                     precision=precision, load_in_4bit=load_in_4bit or None,
                     skip_bad_lines=skip_bad_lines or None, seed=seed, backend=backend,
                     method=method, beta=beta, sft_weight=sft_weight, from_run=from_run)
    if detach:
        from backpropagate_core.runs.worker import start_run

        run_id = start_run(model, str(data), name=name, overrides=overrides)
        console.print(f"run_started run_id={run_id}")
        console.print(f"follow it with: backprop show-run {run_id[:8]}")
        return
    from backpropagate_core.runs.console import ConsoleSink
    from backpropagate_core.runs.store import RunStore
    from backpropagate_core.training.pipeline import execute_run
    from backpropagate_core.training.request import create_run

    store = RunStore()
    run = create_run(store, model, data, name=name, overrides=overrides)
    console.print(f"run_started run_id={run.id}")
    if (num_processes or 1) > 1 or config_file is not None:
        _launch(run.id, store, num_processes, config_file)
        return
    execute_run(run.id, store, extra_sinks=[ConsoleSink(console)])


def _launch(run_id: str, store, num_processes: int | None, config_file: Path | None) -> None:
    """Train the recorded run on several processes; rank 0 records it as usual."""
    import subprocess

    from backpropagate_core.runs import events as ev
    from backpropagate_core.training.distributed import launch_command

    proc = subprocess.run(launch_command(run_id, num_processes, config_file))
    run = store.get(run_id)
    if proc.returncode != 0 and run.status in ("queued", "running"):
        store.record(ev.Failed(run_id, code="RUNTIME_WORKER_DIED",
                               message=f"accelerate launch exited with status {proc.returncode}"))
    if proc.returncode != 0:
        raise typer.Exit(proc.returncode)


@app.command()
def resume(run_id: str = typer.Argument(..., help="Run id or a unique prefix."),
           detach: bool = typer.Option(False, "--detach", help="Resume in a background worker.")) -> None:
    """Continue a stopped, interrupted or failed run from its latest checkpoint."""
    from backpropagate_core.errors import BackpropError
    from backpropagate_core.runs.store import RunStore

    store = RunStore()
    store.reap_dead()
    run = store.get(run_id)
    if detach:
        from backpropagate_core.runs.worker import resume_run

        resume_run(run.id)
        console.print(f"resuming run_id={run.id}")
        return
    if run.active:
        raise BackpropError("STATE_RUN_ACTIVE", f"run {run.id[:8]} is {run.status}")
    from backpropagate_core.runs.console import ConsoleSink
    from backpropagate_core.training.multirun import execute

    console.print(f"resuming run_id={run.id}")
    execute(run.id, store, extra_sinks=[ConsoleSink(console)], resume=True)


@app.command()
def cancel(run_id: str = typer.Argument(..., help="Run id or a unique prefix.")) -> None:
    """Ask a running run to save a checkpoint and stop."""
    from backpropagate_core.runs.worker import cancel_run

    cancel_run(run_id)
    console.print(f"stop requested for {run_id}")


@app.command()
def plan(
    data: Path = typer.Option(..., "--data", "-d", help="Dataset file or folder."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model spec (default: smollm2-135m)."),
    overrides: Optional[str] = typer.Option(None, help="JSON object of settings to fix, e.g. '{\"steps\": 50}'."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show the settings a run would use, with the reason for each default; trains nothing."""
    from rich.table import Table

    from backpropagate_core.training.pipeline import plan_run
    from backpropagate_core.training.run_config import build_config

    config = build_config(model, str(data.expanduser().resolve()), None, **json.loads(overrides or "{}"))
    result = plan_run(config)
    if as_json:
        print(json.dumps(result, default=str))
        return
    table = Table("setting", "value", "why", title=f"plan for {config.model} on {data}")
    for key, reason in result["reasons"].items():
        table.add_row(key, str(result["config"]["training"].get(key)), reason)
    console.print(table)


@app.command()
def presets(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List the built-in model presets and the memory they need."""
    from rich.table import Table

    from backpropagate_core.model.presets import PRESETS

    if as_json:
        print(json.dumps([p.to_dict() for p in PRESETS]))
        return
    table = Table("name", "hub id", "params", "VRAM LoRA", "VRAM 4-bit", "notes")
    for p in PRESETS:
        table.add_row(p.name, p.hub_id, f"{p.params_b:.3g}B", f"{p.vram_gb:g} GB",
                      f"{p.vram_gb_4bit:g} GB", p.description)
    console.print(table)
