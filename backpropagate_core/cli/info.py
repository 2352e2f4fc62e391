"""`backprop info`: everything a bug report needs, and the error-code catalog."""

from __future__ import annotations

import json

import typer

from backpropagate_core.cli.app import app, console


@app.command()
def info(as_json: bool = typer.Option(False, "--json", help="Print JSON."),
         error_codes: bool = typer.Option(False, "--error-codes", help="List every error code with its hint.")) -> None:
    """Show versions, hardware and installed extras (or the error codes)."""
    if error_codes:
        _print_codes(as_json)
        return
    from backpropagate_core.hardware.sysinfo import collect

    data = collect()
    if as_json:
        print(json.dumps(data, default=str, indent=2))
        return
    for section, values in data.items():
        console.print(f"[bold]{section}[/]")
        if isinstance(values, dict):
            for key, value in values.items():
                console.print(f"  {key}: {value}", highlight=False)
        else:
            console.print(f"  {values}", highlight=False)


def _print_codes(as_json: bool) -> None:
    from rich.table import Table

    from backpropagate_core.errors import CATALOG

    if as_json:
        print(json.dumps({c: {"summary": s.summary, "hint": s.hint, "retryable": s.retryable}
                          for c, s in CATALOG.items()}, indent=2))
        return
    table = Table("code", "what happened", "what to do", "retry?")
    for code, spec in CATALOG.items():
        table.add_row(code, spec.summary, spec.hint, "yes" if spec.retryable else "")
    console.print(table)
