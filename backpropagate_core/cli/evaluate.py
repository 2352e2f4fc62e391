"""`backprop eval`: score a trained run's answers against reference answers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table
from rich.text import Text

from backpropagate_core.cli.app import app, console


@app.command("eval")
def eval_command(
    run: str = typer.Argument(..., help="Run id (or a unique prefix), or an adapter folder of a run."),
    data: Optional[Path] = typer.Option(None, "--data", "-d",
                                        help="Questions with reference answers (any dataset format); default: the run's held-out split."),
    gguf: bool = typer.Option(False, "--gguf", help="Also answer with the run's newest GGUF export in llama.cpp."),
    gguf_file: Optional[Path] = typer.Option(None, "--gguf-file", help="Answer with this GGUF file (implies --gguf)."),
    limit: int = typer.Option(64, min=1, help="Score at most this many questions."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """How often the trained model (and the base model, and the GGUF) answers with the reference's fact."""
    from backpropagate_core.eval.run import evaluate

    with console.status("answering"):
        report = evaluate(run, data=data, gguf=gguf, gguf_path=gguf_file, limit=limit)
    if as_json:
        print(json.dumps(report.to_dict(), ensure_ascii=False))
        return
    console.print(_table(report))
    console.print(summary_line(report))


def _table(report) -> Table:
    table = Table("question", "reference", "base", "trained", title=Text(f"eval of {report.source}"),
                  title_justify="left")
    if report.gguf is not None:
        table.add_column("GGUF")
    for row in report.rows:
        cells = [Text(row["prompt"]), Text(row["reference"]), _cell(row["base"], row["base_learned"]),
                 _cell(row["answer"], row["learned"])]
        if report.gguf is not None:
            cells.append(_cell(row["gguf"], row["gguf_agrees"]))
        table.add_row(*cells)
    return table


def _cell(text: str, good: bool) -> Text:
    return Text(text, style="green" if good else "red")


def summary_line(report) -> str:
    n = report.questions

    def share(summary: dict) -> str:
        score = summary.get("answer_score", 0.0)
        return f"{round(score * n)}/{n} ({score:.0%})"

    line = (f"trained model gives the fact in {share(report.model)} answers; base model {share(report.base)}; "
            f"token F1 {report.model.get('f1', 0):.2f}, ROUGE-L {report.model.get('rouge_l', 0):.2f}")
    if report.gguf is not None:
        line += f"; GGUF {share(report.gguf)}, same answer as the trained model in {report.agreement:.0%}"
    return line
