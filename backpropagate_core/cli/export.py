"""Export commands: export (adapter / merged / GGUF, optional Ollama), push, chat."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from backpropagate_core.cli.app import app, console

_STAGES = {"load": "loading", "reference": "reference logits", "merge": "merging",
           "write": "writing", "quantize": "quantizing", "verify": "verifying", "done": "done"}


@app.command()
def export(
    source: str = typer.Argument(..., help="Run id (or prefix), adapter folder or merged model folder."),
    format: str = typer.Option("gguf", "--format", "-f", help="adapter, merged or gguf."),
    quantization: Optional[str] = typer.Option(
        None, "--quantization", "-q",
        help="gguf: f32, f16, bf16, q8_0, q6_k, q5_k_m, q4_k_m (default), q4_0, q3_k_m, q2_k ...; "
             "merged: f32, f16 or bf16 (default: the base model's dtype)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Folder to write into (default: <run>/exports)."),
    no_verify: bool = typer.Option(False, "--no-verify", help="Skip the comparison with the trained model."),
    ollama: bool = typer.Option(False, "--ollama", help="Register the GGUF with Ollama afterwards."),
    ollama_name: Optional[str] = typer.Option(None, "--ollama-name", help="Ollama model name (default: the export's name)."),
    ollama_host: Optional[str] = typer.Option(None, "--ollama-host", help="Ollama server (default: BACKPROPAGATE_OLLAMA_HOST or http://127.0.0.1:11434)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Export a trained run; GGUF files are checked in llama.cpp against the trained model.
    A run's export is recorded as a run of its own (kind export, see `backprop list-runs`)."""
    from backpropagate_core.errors import BackpropError

    if ollama and format != "gguf":
        raise BackpropError("INPUT_EXPORT_OPTION_INVALID", "--ollama needs --format gguf")
    if ollama and ollama_name:
        from backpropagate_core.export.ollama import check_name

        check_name(ollama_name)  # before minutes of exporting, not after
    with _progress() as sink:
        export_id, result = _export(source, format, quantization, output, not no_verify, sink)
    if not as_json:
        _print_result(result)
    registration = None
    if ollama:
        name = ollama_name or _default_ollama_name(result)
        registration = _register(result.path, name, ollama_host)
        if export_id:
            from dataclasses import asdict

            from backpropagate_core.runs.store import RunStore

            RunStore().merge_summary(export_id, ollama=asdict(registration), ollama_error={})
    if as_json:
        out = result.to_dict()
        if registration:
            out["ollama_registration"] = registration.__dict__
        print(json.dumps(out, default=str))
    elif registration:
        console.print(f"[green]registered with Ollama[/] as {registration.name}: "
                      f"[bold]{registration.run_command}[/]")
    elif result.format == "gguf":
        console.print(f"Ollama: cd {result.folder} && ollama create NAME -f Modelfile")


@app.command("ollama-register")
def ollama_register(
    gguf: Path = typer.Argument(..., help="A .gguf file exported by `backprop export`."),
    name: str = typer.Option(..., "--name", help="Ollama model name, e.g. my-bot:q4_k_m."),
    host: Optional[str] = typer.Option(None, "--host", help="Ollama server (default: BACKPROPAGATE_OLLAMA_HOST or http://127.0.0.1:11434)."),
    system: Optional[str] = typer.Option(None, "--system", help="System prompt (default: the training template's own)."),
) -> None:
    """Register an exported GGUF with Ollama (upload once, then create the model)."""
    registration = _register(gguf, name, host, system)
    console.print(f"[green]registered[/] {registration.name} at {registration.host}: "
                  f"[bold]{registration.run_command}[/]")


def _export(source: str, format: str, quantization: str | None, output: Path | None, verify: bool,
            sink) -> tuple:
    """(export run id, result): a run id is exported as an export run of that run; a folder
    is exported as it is, with no run of its own (None)."""
    from dataclasses import replace

    from backpropagate_core.export import export_model, jobs
    from backpropagate_core.runs.store import RunStore

    path = Path(source).expanduser()
    if path.exists() or "/" in source or source.startswith((".", "~")):
        return None, export_model(source, format=format, quantization=quantization, output_dir=output,
                                  verify=verify, on_progress=sink)
    store = RunStore()
    run = store.get(source)
    request = replace(jobs.check_request(run, format, quantization), verify=verify)
    if output:
        request = replace(request, output_dir=output.expanduser().resolve())
    return jobs.export_here(store, run, request, on_progress=sink)


def _default_ollama_name(result) -> str:
    """`<run name>:<quantization>`, e.g. support-bot:q4_k_m."""
    stem = result.path.stem
    suffix = f"-{result.quantization}"
    return f"{stem[: -len(suffix)] if stem.endswith(suffix) else stem}:{result.quantization}"


def _register(path: Path, name: str, host: str | None, system: str | None = None):
    from backpropagate_core.export import register_with_ollama

    with console.status(f"registering {name} with Ollama") as status:
        return register_with_ollama(path, name, host=host, system=system,
                                    on_status=lambda s: status.update(f"Ollama: {s}"))


class _progress:
    """A rich progress bar fed by ExportProgress events."""

    def __enter__(self):
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("[bold]{task.description:<16}"), BarColumn(),
                            TextColumn("{task.fields[message]}"), TimeElapsedColumn(),
                            console=console, transient=True)
        self.bar.start()
        self.task = self.bar.add_task("export", total=1, message="")
        return self

    def __call__(self, event) -> None:
        total = event.total or 1
        self.bar.update(self.task, description=_STAGES.get(event.stage, event.stage),
                        completed=min(event.done, total), total=total, message=event.message)

    def __exit__(self, *exc) -> None:
        self.bar.stop()


def _print_result(result) -> None:
    v = result.verification
    console.print(f"[green]exported[/] {result.format}"
                  f"{' ' + result.quantization if result.quantization else ''}: {result.path}")
    console.print(f"  size {result.size_bytes / 1e6:.1f} MB, {result.seconds:.1f} s")
    if "max_logit_diff" in v:
        line = (f"  verified: max logit diff {v['max_logit_diff']:.4g} (bound {v['bound']:.4g}), "
                f"top-1 agreement {v['top1_agreement']:.0%}, KL {v['kl_divergence']:.2g}")
        if "tokenization_match" in v:
            line += f", tokenization {'matches' if v['tokenization_match'] else 'DIFFERS'}"
        console.print(line)
    elif v.get("passed"):
        console.print("  verified: files identical to the run's adapter")
    else:
        console.print("  [yellow]not verified[/]")
    template = result.ollama or {}
    if template.get("faithful") is True:
        console.print("  Ollama TEMPLATE: formats prompts exactly like training")
    elif template.get("faithful") is False:
        console.print(f"  [yellow]Ollama TEMPLATE formats prompts differently from training[/]: {template.get('mismatch')}",
                      highlight=False)


@app.command()
def push(
    source: str = typer.Argument(..., help="Run id (or prefix), adapter/model folder or export folder."),
    repo: str = typer.Option(..., "--repo", help="Hub repository, user/name."),
    public: bool = typer.Option(False, "--public", help="Make a new repository public (default private)."),
    export_name: Optional[str] = typer.Option(None, "--export", help="Push this export of the run (e.g. gguf-q4_k_m) instead of its adapter."),
    token: Optional[str] = typer.Option(None, "--token", envvar="HF_TOKEN", help="Hub token (default: HF_TOKEN or the saved login)."),
) -> None:
    """Upload an adapter, merged model or GGUF to the Hugging Face Hub with a model card."""
    from backpropagate_core.export import push_to_hub

    with console.status(f"uploading to {repo}"):
        result = push_to_hub(source, repo, private=not public, token=token, export=export_name)
    console.print(f"[green]pushed[/] {len(result.files)} files to {result.url} "
                  f"({'private' if result.private else 'public'})")


@app.command()
def chat(
    source: str = typer.Argument(..., help="Run id (or prefix), adapter folder or merged model folder."),
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="Ask once and exit (default: interactive)."),
    messages: Optional[str] = typer.Option(
        None, "--messages", help='Answer the last turn of this conversation, a JSON list of {"role", "content"}, and exit.'),
    gguf: Optional[Path] = typer.Option(None, "--gguf", help="GGUF to compare with (default: the run's newest GGUF export)."),
    no_gguf: bool = typer.Option(False, "--no-gguf", help="Answer with the trained model only."),
    system: Optional[str] = typer.Option(None, "--system", help="System prompt."),
    max_new_tokens: int = typer.Option(128, help="Longest answer, in tokens."),
    as_json: bool = typer.Option(False, "--json", help="Print the answers as JSON (with --prompt or --messages)."),
) -> None:
    """Chat with the trained model and its GGUF side by side (greedy, so answers are comparable)."""
    from backpropagate_core.errors import BackpropError
    from backpropagate_core.export.chat import ChatSession, check_messages

    history: list[dict] = [{"role": "system", "content": system}] if system else []
    if messages is not None:
        try:
            history += json.loads(messages)
        except ValueError as err:
            raise BackpropError("INPUT_EXPORT_OPTION_INVALID", f"--messages is not JSON: {err}") from None
    if prompt is not None:
        history.append({"role": "user", "content": prompt})
    once = prompt is not None or messages is not None
    if once:
        history = check_messages(history)
    elif as_json:
        raise BackpropError("INPUT_EXPORT_OPTION_INVALID", "--json answers one turn: pass --prompt or --messages")
    if as_json:
        session = ChatSession(source, gguf=gguf, max_new_tokens=max_new_tokens, compare_gguf=not no_gguf)
        print(json.dumps(_answers_json(session, session.ask(history))))
        return
    with console.status("loading the model"):
        session = ChatSession(source, gguf=gguf, max_new_tokens=max_new_tokens, compare_gguf=not no_gguf)
    if session.gguf_path:
        console.print(f"[dim]comparing with {session.gguf_path}[/]")
    if once:
        _print_answers(session.ask(history))
        return
    while (text := _ask()) is not None:
        history.append({"role": "user", "content": text})
        answers = session.ask(history)
        _print_answers(answers)
        history.append({"role": "assistant", "content": answers["transformers"].text})


def _answers_json(session, answers: dict) -> dict:
    both = len(answers) == 2
    return {"gguf": str(session.gguf_path) if session.gguf_path else None,
            "answers": {name: {"text": a.text, "tokens": a.tokens, "seconds": round(a.seconds, 3)}
                        for name, a in answers.items()},
            "identical": answers["transformers"].tokens == answers["llama.cpp"].tokens if both else None}


def _ask() -> str | None:
    try:
        text = console.input("[bold cyan]you>[/] ").strip()
    except EOFError:
        return None
    return None if text in ("", "/exit", "/quit") else text


def _print_answers(answers: dict) -> None:
    from rich.columns import Columns
    from rich.panel import Panel

    panels = [Panel(a.text or "[dim](empty)[/]", title=f"{name} · {a.seconds:.1f}s", expand=True)
              for name, a in answers.items()]
    console.print(Columns(panels, equal=True, expand=True) if len(panels) > 1 else panels[0])
    if len(answers) == 2:
        same = answers["transformers"].tokens == answers["llama.cpp"].tokens
        console.print("[green]identical answers[/]" if same else "[yellow]the answers differ[/]")
