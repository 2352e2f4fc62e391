"""`backprop feedback`: the preference pairs a run's chat feedback makes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table
from rich.text import Text

from backpropagate_core.cli.app import app, console

_SHOWN = 200


@app.command("feedback")
def feedback_command(
    run: str = typer.Argument(..., help="Run id or a unique prefix."),
    out: Optional[Path] = typer.Option(None, "--out", "-o",
                                       help="Write the pairs here as a preference dataset (.jsonl, TRL's conversational format)."),
    force: bool = typer.Option(False, "--force", help="Replace a different file already at --out."),
    as_json: bool = typer.Option(False, "--json", help="Print the feedback and the pairs as JSON."),
) -> None:
    """List the thumbs and edits given to a run's answers and the preference pairs they make."""
    from backpropagate_core.data import feedback
    from backpropagate_core.runs.store import RunStore

    found = RunStore().get(run)
    items = feedback.items(found.run_dir)
    pairs = feedback.pairs(items)
    written = feedback.write_dataset(pairs, out, overwrite=force) if out else None
    shortfall = feedback.shortfall(pairs)
    if as_json:
        print(json.dumps({"run_id": found.id, "counts": feedback.counts(items),
                          "items": [i.to_dict() for i in items], "pairs": [p.to_dict() for p in pairs],
                          "enough": shortfall is None, "message": shortfall,
                          "out": str(written) if written else None}, ensure_ascii=False))
        return
    if pairs:
        console.print(_table(pairs))
    n = feedback.counts(items)
    console.print(f"{len(pairs)} pairs from {len(items)} ratings: {n['up']} up, {n['down']} down, "
                  f"{n['edit']} edited (the latest verdict on each answer)", highlight=False)
    if shortfall:
        console.print(f"[yellow]{shortfall}[/]", highlight=False)
    if written:
        console.print(f"wrote {len(pairs)} pairs to {written}", highlight=False)


def _table(pairs) -> Table:
    table = Table("question", "chosen", "rejected", "from", title_justify="left",
                  title=Text(f"{len(pairs)} preference pairs"
                             + (f" (first {_SHOWN})" if len(pairs) > _SHOWN else "")))
    for pair in pairs[:_SHOWN]:
        table.add_row(Text(pair.prompt[-1]["content"]), Text(pair.chosen, style="green"),
                      Text(pair.rejected, style="red"), Text(", ".join(pair.feedback_ids), style="dim"))
    return table
