"""The `backprop` Typer app and the one place where errors become exit codes.

Command modules register themselves on `app`; each command parses its options, calls
one engine function and prints. Heavy libraries are imported inside the commands so
`backprop --help` stays fast.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console

app = typer.Typer(
    name="backprop",
    help="Fine-tune LLMs with LoRA: train, watch, resume, export. Run `backprop COMMAND --help`.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)
_state = {"verbose": False}


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v",
                                       help="Show full tracebacks on errors.")) -> None:
    _state["verbose"] = verbose


def verbose() -> bool:
    return _state["verbose"]


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `backprop` script: runs a command and maps errors to exit codes.

    0 ok, 1 input or config error, 2 usage error, 3 runtime failure.
    """
    from backpropagate_core.errors import BackpropError
    from backpropagate_core.redact import redact

    args = sys.argv[1:] if argv is None else argv
    _state["verbose"] = "--verbose" in args or "-v" in args
    if not args or "--help" in args or "-h" in args:
        # Help needs no logging, so it skips loading the settings (pydantic-settings).
        pass
    else:
        from backpropagate_core.logs import setup_logging

        # Progress and log lines of in-process runs reach the terminal through the console
        # sink; the logger repeats them only in files (run.log, BACKPROPAGATE_LOG_FILE).
        setup_logging(echo_events=False)
    try:
        app(args=args, standalone_mode=False)
        return 0
    except BackpropError as err:
        if _state["verbose"]:
            err_console.print_exception()
        if "--json" in args:
            # Machine readers (the UI's launcher) get the error as JSON on stdout.
            import json
            print(json.dumps({"error": err.to_dict()}))
        err_console.print(f"[bold red]\\[{err.code}][/] {err.message}", highlight=False)
        err_console.print(f"[dim]hint:[/] {err.hint}", highlight=False)
        return err.exit_code
    except typer.Exit as exc:
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("aborted")
        return 130
    except Exception as exc:  # noqa: BLE001 - the CLI's outer edge turns anything into a coded error
        # Typer's own click exceptions (usage errors exit 2) print themselves.
        if hasattr(exc, "show") and isinstance(getattr(exc, "exit_code", None), int):
            exc.show()
            return exc.exit_code
        if _state["verbose"]:
            err_console.print_exception()
        err_console.print(f"[bold red]\\[RUNTIME_UNEXPECTED][/] {redact(f'{type(exc).__name__}: {exc}')}",
                          highlight=False)
        err_console.print("[dim]hint:[/] re-run with --verbose for the traceback", highlight=False)
        return 3
