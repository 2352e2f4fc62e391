"""`backprop multi-run`: LoRA runs over successive chunks of a dataset, merged (SLAO) or
trained on sequentially, with the forgetting matrix printed at the end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from backpropagate_core.cli.app import app, console


@app.command("multi-run")
def multi_run(
    data: Optional[Path] = typer.Option(None, "--data", "-d", help="Dataset file or folder; run i trains on its i-th chunk."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Preset, local folder, .gguf file or hub id (default: smollm2-135m)."),
    runs: int = typer.Option(5, "--runs", help="Training runs in the campaign."),
    steps: int = typer.Option(100, "--steps", help="Optimizer steps per run."),
    samples: Optional[int] = typer.Option(None, "--samples", help="Examples per chunk, its validation slice included (default: the dataset shared out evenly between the runs)."),
    merge_mode: str = typer.Option("slao", "--merge-mode", help="slao (merge adapters between runs) or sequential (keep training one adapter)."),
    schedule: str = typer.Option("inv_sqrt", "--schedule", help="SLAO merge step λ(i): inv_sqrt (1/√i), inv (1/i) or constant (--lambda)."),
    lambda_c: Optional[float] = typer.Option(None, "--lambda", help="λ of the constant schedule (default: 0.5)."),
    replay: float = typer.Option(0.0, "--replay", help="Extra examples replayed from earlier chunks, as a share of each run's own (e.g. 0.1)."),
    val_per_chunk: Optional[int] = typer.Option(None, "--val-per-chunk", help="Validation examples held out of each chunk (default: 10%)."),
    resume: Optional[str] = typer.Option(None, "--resume", help="Continue this unfinished campaign (run id or prefix) at its first unfinished run."),
    fresh: bool = typer.Option(False, "--fresh", help="Start a new campaign even when an unfinished one with these settings exists."),
    learning_rate: Optional[float] = typer.Option(None, "--lr", "--learning-rate", help="Peak learning rate of each run."),
    batch_size: Optional[int] = typer.Option(None, help="Examples per device step."),
    lora_r: Optional[int] = typer.Option(None, "--lora-r", help="LoRA rank (default: 16)."),
    precision: Optional[str] = typer.Option(None, help="auto, bf16, fp16 or fp32."),
    seed: Optional[int] = typer.Option(None, help="Campaign seed; run i uses seed + i - 1."),
    name: Optional[str] = typer.Option(None, help="A name for the campaign."),
    detach: bool = typer.Option(False, "--detach", help="Run in a background worker and return at once."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Train a multi-run campaign and show how much each chunk was forgotten.

    The merged adapter after the last run is the result that `export` and `chat` use.
    """
    from backpropagate_core.training import multirun
    from backpropagate_core.errors import BackpropError
    from backpropagate_core.runs.store import RunStore

    options = dict(merge_mode=merge_mode, schedule=schedule, lambda_c=lambda_c,
                   replay_fraction=replay, val_per_chunk=val_per_chunk)
    overrides = dict(learning_rate=learning_rate, batch_size=batch_size, r=lora_r,
                     precision=precision, seed=seed)
    store = RunStore()
    if resume:
        run = multirun.find_resumable(store, None, None, resume)
        if detach:
            from backpropagate_core.runs.worker import resume_run
            return _detached(resume_run(run.id))
        result = multirun.execute_campaign(run.id, store, extra_sinks=[_console_sink()], resume=True)
    else:
        if data is None:
            raise BackpropError("CONFIG_INVALID", "--data is required (or --resume RUN to continue a campaign)")
        if detach:
            from backpropagate_core.runs.worker import start_multi_run
            return _detached(start_multi_run(model, str(data), num_runs=runs, steps_per_run=steps,
                                             samples_per_run=samples, overrides=overrides, name=name,
                                             fresh=fresh, **options))
        from backpropagate_core.training.request import create_run

        run = create_run(store, model, data, name=name, overrides=overrides, fresh=fresh,
                         campaign=dict(num_runs=runs, steps_per_run=steps, samples_per_run=samples, **options))
        result = multirun.execute_campaign(run.id, store, extra_sinks=[_console_sink()])
    if as_json:
        print(json.dumps({"run_id": result.run_id, "status": result.status,
                          "forgetting": result.forgetting, "avg_forgetting": result.avg_forgetting,
                          "adapter": str(result.adapter_path) if result.adapter_path else None}))
        return
    console.print(forgetting_table(result.forgetting, result.avg_forgetting))


def _detached(run_id: str) -> None:
    console.print(f"run_started run_id={run_id}")
    console.print(f"follow it with: backprop show-run {run_id[:8]}")


def forgetting_table(matrix: list[list[float | None]], avg: float | None):
    """Validation loss per chunk (columns) after each run (rows)."""
    from rich.table import Table

    n = len(matrix[0]) if matrix else 0
    caption = f"average forgetting {avg:+.4f}" if avg is not None else None
    table = Table("after run", *[f"chunk {j + 1}" for j in range(n)],
                  title="validation loss per chunk", caption=caption)
    for i, row in enumerate(matrix, 1):
        table.add_row(str(i), *["-" if x is None else f"{x:.4f}" for x in row])
    return table


def _console_sink():
    """The training progress bar, plus one line per run start, merge and measurement."""
    from backpropagate_core.runs.console import ConsoleSink
    from backpropagate_core.runs.events import CampaignRunStarted, ForgettingMeasured, MergeDone

    bar = ConsoleSink(console)

    def emit(event) -> None:
        bar(event)
        out = bar.progress.console
        if isinstance(event, CampaignRunStarted):
            replay = f" + {event.replay_examples} replayed" if event.replay_examples else ""
            out.print(f"[bold]run {event.run_index}/{event.num_runs}[/]: {event.train_examples} examples{replay}")
        elif isinstance(event, MergeDone) and event.lam is not None:
            out.print(f"merged after run {event.run_index} (λ = {event.lam:.3f})")
        elif isinstance(event, ForgettingMeasured):
            losses = "  ".join(f"{x:.4f}" if x is not None else "-" for x in event.losses)
            out.print(f"validation loss per chunk: {losses}")
    return emit
