"""The terminal as an event sink: a rich progress bar with loss, tokens/s and ETA."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

from backpropagate_core.runs import events as ev


class ConsoleSink:
    """Prints log lines and evaluation results; draws one progress bar for the steps."""

    def __init__(self, console: Console | None = None, quiet_logs: bool = False) -> None:
        self.console = console or Console(stderr=True)
        self.quiet_logs = quiet_logs
        self.progress = Progress(
            TextColumn("[bold]training"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss [cyan]{task.fields[loss]}"), TextColumn("{task.fields[rate]} tok/s"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=self.console, transient=False)
        self.task = None

    def __call__(self, event: ev.Event) -> None:
        if isinstance(event, ev.RunStarted):
            self.progress.start()
            self.task = self.progress.add_task("train", total=event.total_steps,
                                               completed=event.resumed_from_step, loss="-", rate="-")
        elif isinstance(event, ev.Step) and self.task is not None:
            rate = f"{event.tokens_per_s:.0f}" if event.tokens_per_s else "-"
            self.progress.update(self.task, completed=event.step, total=event.total,
                                 loss=f"{event.loss:.4f}", rate=rate)
        elif isinstance(event, ev.Eval):
            score = f", answers {event.answer_score:.0%} of held-out questions" if event.answer_score is not None else ""
            best = " [green](best so far)[/]" if event.best else ""
            self.progress.console.print(f"step {event.step}: held-out loss {event.loss:.4f}{score}{best}")
        elif isinstance(event, ev.CheckpointSaved):
            self.progress.console.print(f"[dim]checkpoint saved at step {event.step}[/]")
        elif isinstance(event, ev.LogLine) and not self.quiet_logs:
            style = {"WARNING": "yellow", "ERROR": "red"}.get(event.level, "dim")
            self.progress.console.print(f"[{style}]{event.message}[/]", highlight=False)
        elif isinstance(event, (ev.Finished, ev.Failed, ev.Cancelled)):
            self.progress.stop()
            self._summary(event)

    def _summary(self, event: ev.Event) -> None:
        c = self.console
        if isinstance(event, ev.Finished):
            loss = f"{event.final_loss:.4f}" if event.final_loss is not None else "-"
            rate = f"{event.tokens_per_s:.0f}" if event.tokens_per_s else "-"
            c.print(f"[green]finished[/] {event.steps} steps, final loss {loss}, "
                    f"{rate} tokens/s, {event.wall_s or 0:.1f} s")
            if event.best_step is not None:
                early = "stopped early; " if event.stopped_early else ""
                score = "-" if event.best_score is None else f"{event.best_score:.0%}"
                base = "-" if event.base_score is None else f"{event.base_score:.0%}"
                c.print(f"  {early}kept step {event.best_step}: answers {score} of the held-out questions "
                        f"with the fact (base model {base})")
                c.print(f"  see the answers: backprop eval {event.run_id[:8]}")
            for name, path in event.artifacts.items():
                c.print(f"  {name}: {path}")
        elif isinstance(event, ev.Cancelled):
            c.print(f"[yellow]stopped[/] at step {event.step}; checkpoint {event.checkpoint or '-'}")
            c.print(f"  continue with: backprop resume {event.run_id[:8]}")
