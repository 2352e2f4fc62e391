"""Run store commands: list-runs, show-run, delete-run."""

from __future__ import annotations

import json
import time
from typing import Optional

import typer

from backpropagate_core.cli.app import app, console


def _fmt_time(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else "-"


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, sec = divmod(int(seconds), 60)
    return f"{minutes}m{sec:02d}s" if minutes else f"{sec}s"


@app.command("list-runs")
def list_runs(
    status: Optional[str] = typer.Option(None, help="Only runs with this status (running, completed, failed, cancelled, interrupted, queued)."),
    limit: Optional[int] = typer.Option(None, help="At most this many, newest first."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List runs, newest first."""
    from rich.table import Table

    from backpropagate_core.runs.store import RunStore

    store = RunStore()
    store.reap_dead()
    runs = store.list(status=status, limit=limit)
    if as_json:
        print(json.dumps([r.to_dict() for r in runs], default=str))
        return
    table = Table("id", "name", "kind", "status", "model", "dataset", "started", "duration", "step", "loss")
    for r in runs:
        loss = r.final_loss if r.final_loss is not None else r.last_loss
        kind = f"{r.kind} of {r.parent[:8]}" if r.parent else r.kind
        table.add_row(r.id[:8], r.name or "-", kind, r.status, r.model or "-",
                      (r.dataset or "-").rsplit("/", 1)[-1], _fmt_time(r.started_at or r.created_at),
                      _fmt_duration(r.duration_s), f"{r.step}/{r.total_steps}",
                      f"{loss:.4f}" if loss is not None else "-")
    console.print(table)


@app.command("show-run")
def show_run(run_id: str = typer.Argument(..., help="Run id or a unique prefix."),
             as_json: bool = typer.Option(False, "--json", help="Print JSON."),
             events: int = typer.Option(10, help="How many of the latest events to show.")) -> None:
    """Show a run's status, settings, artifacts and latest events."""
    from backpropagate_core.runs.store import RunStore

    store = RunStore()
    store.reap_dead()
    run = store.get(run_id)
    recent = [e for _, e in store.events(run.id)][-events:] if events else []
    if as_json:
        print(json.dumps({**run.to_dict(), "events": recent}, default=str))
        return
    console.print(f"[bold]{run.id}[/] {run.name or ''}  status [bold]{run.status}[/]")
    console.print(f"model {run.model}  data {run.dataset}")
    if run.parent:
        console.print(f"{run.kind} of run {run.parent}")
    console.print(f"step {run.step}/{run.total_steps}  last loss {run.last_loss}  final loss {run.final_loss}"
                  f"  duration {_fmt_duration(run.duration_s)}")
    if run.error_code:
        console.print(f"[red]\\[{run.error_code}][/] {run.error_message}\n  hint: {run.error_hint}")
    console.print(f"folder {run.run_dir}")
    for name, path in run.artifacts.items():
        console.print(f"  {name}: {path}")
    for e in recent:
        detail = {k: v for k, v in e.items() if k not in ("type", "run_id", "ts", "config", "reasons")}
        console.print(f"[dim]{_fmt_time(e['ts'])}[/] {e['type']} {json.dumps(detail, default=str)[:160]}",
                      highlight=False)


@app.command("delete-run")
def delete_run(run_id: str = typer.Argument(..., help="Run id or a unique prefix."),
               yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation.")) -> None:
    """Delete a finished run and its folder."""
    from backpropagate_core.runs.store import RunStore

    store = RunStore()
    run = store.get(run_id)
    if not yes and not typer.confirm(f"delete run {run.id[:8]} and {run.run_dir}?"):
        raise typer.Exit(1)
    store.delete(run.id)
    console.print(f"deleted {run.id}")
