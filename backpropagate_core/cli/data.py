"""`backprop data ...`: look at a dataset before training on it."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table
from rich.text import Text

from backpropagate_core.cli.app import app, console

data_app = typer.Typer(help="Inspect datasets: format, problems, token lengths.", no_args_is_help=True)
app.add_typer(data_app, name="data")

_PROBLEMS_SHOWN = 20
_BAR_WIDTH = 40


@data_app.command("report")
def report_command(
    file: Path = typer.Argument(..., help="Dataset file (.jsonl, .json, .csv, .parquet) or dataset folder."),
    model: str = typer.Option(None, "--model", "-m",
                              help="Model whose tokenizer and chat template count tokens; "
                                   "'none' skips token statistics. Default: the configured model."),
    max_seq_len: int = typer.Option(None, "--max-seq-len", help="Count examples longer than this many tokens."),
    skip_bad_lines: bool = typer.Option(True, "--skip-bad-lines/--strict",
                                        help="List every malformed line (default), or stop at the first."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Format, example count, problems, duplicates and token-length percentiles of a dataset."""
    from backpropagate_core.data import dataset as data

    loaded = data.load(file, skip_bad_lines=skip_bad_lines)
    tokenizer = None
    if (model or "").lower() != "none":
        from backpropagate_core.config import load_settings
        from backpropagate_core.model.loader import load_tokenizer

        settings = load_settings()
        tokenizer = load_tokenizer(model or settings.model,
                                   trust_remote_code=settings.training.trust_remote_code)
    from backpropagate_core.data.report import build_report

    result = build_report(loaded, tokenizer, max_seq_len)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
        return
    console.print(_summary_table(result))
    if result.histogram:
        console.print(_histogram_table(result.histogram))
    if result.problems:
        console.print(_problems_table(result.problems))


def _summary_table(result) -> Table:
    table = Table(title=Text(f"Dataset report: {result.path}"), show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    rows = [("format", result.format), ("examples", str(result.examples)),
            ("problems", str(len(result.problems))), ("duplicates", str(result.duplicates)),
            ("empty replies", str(result.empty))]
    if result.token_percentiles:
        p = result.token_percentiles
        rows += [("tokens p50 / p90 / p95 / p99",
                  f"{p['p50']} / {p['p90']} / {p['p95']} / {p['p99']}"),
                 ("tokens max", str(p["max"])), ("tokens total", str(result.total_tokens))]
        if result.max_seq_len:
            rows.append((f"over {result.max_seq_len} tokens", str(result.over_long)))
    else:
        rows.append(("tokens", "not counted (--model none)"))
    if result.pairs:
        pairs, unit = result.pairs, result.pairs["unit"]
        rows += [("preference pairs", str(pairs["count"])),
                 (f"chosen {unit} mean / p50 / max", "{mean} / {p50} / {max}".format(**pairs["chosen"])),
                 (f"rejected {unit} mean / p50 / max", "{mean} / {p50} / {max}".format(**pairs["rejected"])),
                 ("chosen is the longer answer", f"{pairs['chosen_longer']:.0%} of pairs")]
    for name, value in rows:
        table.add_row(name, value)
    return table


def _histogram_table(histogram: list[dict]) -> Table:
    table = Table(title="Tokens per example", title_justify="left")
    table.add_column("tokens", justify="right")
    table.add_column("examples", justify="right")
    table.add_column("")
    peak = max(b["count"] for b in histogram) or 1
    for b in histogram:
        bar = "█" * round(_BAR_WIDTH * b["count"] / peak)
        table.add_row(f"{b['bin_start']}–{b['bin_end']}", str(b["count"]), f"[cyan]{bar}[/]")
    return table


def _problems_table(problems) -> Table:
    more = len(problems) - _PROBLEMS_SHOWN
    title = "Problems" + (f" (first {_PROBLEMS_SHOWN} of {len(problems)})" if more > 0 else "")
    table = Table(title=title, title_justify="left")
    table.add_column("line", justify="right")
    table.add_column("code")
    table.add_column("message", overflow="fold")
    for problem in problems[:_PROBLEMS_SHOWN]:
        table.add_row(str(problem.line or ""), problem.code, Text(problem.message))
    return table
