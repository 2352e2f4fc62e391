"""Export: pick a run (or checkpoint), a format and a quantization, export it in a worker
process, watch it verified, copy the Ollama command, and chat with the result."""

from __future__ import annotations

import asyncio
import time

import reflex as rx

from backpropagate_app import components as ui
from backpropagate_app import engine, limits
from backpropagate_app import export_view as view
from backpropagate_app.display import error_view, unexpected_error
from backpropagate_app.shell import Page, ShellState, layout
from backpropagate_core import worker
from backpropagate_core.errors import BackpropError
from backpropagate_core.export.jobs import EVENT_TYPES, worker_alive

POLL_S = 0.5
"""How often an open page reads the run's export events."""
MAX_PROMPT = 4000
CHAT_TOKENS = 128
_chat_slot = asyncio.Semaphore(1)
"""Each question loads a model in a process of its own; one at a time keeps the machine usable."""


# ---- engine side (blocking; called through asyncio.to_thread) ------------------------------------

def read_job(run_id: str, tail: view.ExportTail) -> dict:
    """The view of the run's newest export job, after reading the events since the last poll."""
    tail.feed(engine.store().events(run_id, after_id=tail.after_id, types=EVENT_TYPES))
    return tail.view(alive=worker_alive(tail.started) if tail.running else True)


def launch(run_id: str, source: str, fmt: str, quantization: str, dtype: str, ollama_name: str) -> str:
    """Start the export worker; returns the job id."""
    quant = {"gguf": quantization, "merged": None if dtype == "auto" else dtype}.get(fmt)
    limits.allow("start")  # an export is a process working this machine hard, like a run
    # The Ollama host is the server's setting: the browser never chooses where files are uploaded.
    return worker.start_export(run_id, fmt, quant, checkpoint=None if source == view.FINAL else source,
                               ollama_name=ollama_name.strip() or None, home=engine.settings().home)


def answer(run_id: str, source: str, gguf_key: str, prompt: str) -> tuple[list[dict], str]:
    """Answer cards and verdict for one prompt, from the run's adapter (or checkpoint) and GGUF."""
    if not prompt.strip():
        raise BackpropError("INPUT_EXPORT_OPTION_INVALID", "type a question first")
    if len(prompt) > MAX_PROMPT:
        raise BackpropError("INPUT_EXPORT_OPTION_INVALID", f"the question is {len(prompt)} characters; "
                                                           f"the limit is {MAX_PROMPT}")
    run = engine.store().get(run_id)
    target = run.id
    if source != view.FINAL:
        if source not in {o["value"] for o in view.source_options(run)}:
            raise BackpropError("INPUT_EXPORT_SOURCE_INVALID", f"{source!r} is not a checkpoint of this run")
        target = str(run.run_dir / "checkpoints" / source)
    gguf = view.gguf_path(run.summary, gguf_key)  # a key of the run's exports, never a browser path
    out = worker.chat_once(target, [{"role": "user", "content": prompt}], gguf=gguf,
                           max_new_tokens=CHAT_TOKENS, compare=gguf is not None)
    return view.chat_view(out, gguf_key if gguf else "")


class ExportState(rx.State):
    runs: list[dict[str, str]] = []
    run_id: str = ""
    run_name: str = ""
    model: str = ""
    params: str = ""
    sources: list[dict[str, str]] = []
    source: str = view.FINAL
    format: str = "gguf"
    quantization: str = view.RECOMMENDED
    dtype: str = "auto"
    ollama_name: str = ""
    ollama_host: str = ""
    format_options: list[dict[str, str]] = []
    quant_options: list[dict[str, str]] = []
    dtype_options: list[dict[str, str]] = []
    files: list[dict[str, str]] = []
    ggufs: list[dict[str, str]] = []
    load_error: dict[str, str] = {}
    start_error: dict[str, str] = {}
    starting: bool = False
    # The run's newest export job, as export_view.ExportTail.view() gives it.
    job: str = ""
    status: str = ""
    title: str = ""
    started: str = ""
    stages: list[dict[str, str]] = []
    progress: int = 0
    messages: list[dict[str, str]] = []
    error: dict[str, str] = {}
    result: dict[str, str] = {}
    checks: list[dict[str, str]] = []
    ollama: dict[str, str] = {}
    ollama_error: dict[str, str] = {}
    # Chat
    prompt: str = ""
    chat_gguf: str = view.NO_GGUF
    answers: list[dict[str, str]] = []
    verdict: str = ""
    chatting: bool = False
    chat_error: dict[str, str] = {}

    @rx.event
    def load(self):
        self.ollama_host, self.load_error = engine.settings().ollama_host, {}
        try:
            self.runs = view.exportable_runs(engine.store())
        except Exception as exc:  # noqa: BLE001 - the UI's outer edge
            self.runs, self.load_error = [], unexpected_error(exc)
        ids = [r["value"] for r in self.runs]
        wanted = self.router.url.query_parameters.get("run", "")
        match = [i for i in ids if wanted and i.startswith(wanted)]
        self.run_id = match[0] if match else self.run_id if self.run_id in ids else (ids[0] if ids else "")
        self._read_run()
        return ExportState.watch

    def _read_run(self) -> None:
        """Options, sizes and recorded exports of the selected run (a few small reads).
        Runs on load, on picking a run and when an export ends, so the chat panel then
        compares with the run's newest GGUF."""
        if not self.run_id:
            self.sources, self.files, self.ggufs = [], [], []
            return
        try:
            info = view.run_info(engine.store(), self.run_id)
        except BackpropError as err:
            self.load_error = error_view(err)
            return
        self.load_error = {}
        for key in ("run_name", "model", "params", "sources", "format_options", "quant_options",
                    "dtype_options", "files", "ggufs"):
            setattr(self, key, info["name" if key == "run_name" else key])
        if self.source not in {s["value"] for s in self.sources}:
            self.source = self.sources[0]["value"] if self.sources else view.FINAL
        self.chat_gguf = self.ggufs[0]["value"] if self.ggufs else view.NO_GGUF

    @rx.event
    def set_run(self, value: str):
        self.run_id, self.answers, self.verdict, self.chat_error, self.start_error = value, [], "", {}, {}
        self._read_run()

    @rx.event
    def set_source(self, value: str):
        self.source = value

    @rx.event
    def set_format(self, value: str):
        self.format = value

    @rx.event
    def set_quantization(self, value: str):
        self.quantization = value

    @rx.event
    def set_dtype(self, value: str):
        self.dtype = value

    @rx.event
    def set_ollama_name(self, value: str):
        self.ollama_name = value

    @rx.event
    def set_prompt(self, value: str):
        self.prompt = value

    @rx.event
    def set_chat_gguf(self, value: str):
        self.chat_gguf = value

    @rx.var
    def exporting(self) -> bool:
        return self.status == "running"

    @rx.var
    def chat_ggufs(self) -> list[dict[str, str]]:
        return [*self.ggufs, {"value": view.NO_GGUF, "label": "none: the fine-tuned model only"}]

    @rx.var
    def ollama_placeholder(self) -> str:
        return view.default_ollama_name(self.run_name, self.quantization)

    @rx.event(background=True)
    async def watch(self):
        """Follow the selected run's newest export job until the page's load chain is
        cancelled (navigation, disconnect); the lock is taken only to read the run id and
        to copy changes in."""
        tail: view.ExportTail | None = None
        shown: dict | None = None
        while True:
            async with self:
                run_id = self.run_id
            try:
                if tail is None or tail.run_id != run_id:
                    tail, shown = view.ExportTail(run_id), None
                job = await asyncio.to_thread(read_job, run_id, tail) if run_id else view.EMPTY_JOB
            except Exception as exc:  # noqa: BLE001 - the UI task's outer edge: show, keep polling
                job = {**(shown or view.EMPTY_JOB), "error": unexpected_error(exc)}
            if job != shown:
                ended = shown is not None and shown["status"] == "running" and job["status"] != "running"
                async with self:
                    if self.run_id == run_id:
                        for key, value in job.items():
                            setattr(self, key, value)
                        if ended:
                            self._read_run()  # list the new file, offer it to the chat panel
                shown = job
            await asyncio.sleep(POLL_S)

    @rx.event(background=True)
    async def start(self):
        async with self:
            if self.starting or self.exporting or not self.run_id:
                return
            self.starting, self.start_error = True, {}
            args = (self.run_id, self.source, self.format, self.quantization, self.dtype, self.ollama_name)
        job, error = "", {}
        try:
            job = await asyncio.to_thread(launch, *args)
        except BackpropError as err:
            error = error_view(err)
        except Exception as exc:  # noqa: BLE001 - the UI task's outer edge
            error = unexpected_error(exc)
        # The button stays busy until the watcher shows the new job.
        deadline = time.monotonic() + 10
        while job and time.monotonic() < deadline:
            async with self:
                if self.job == job:
                    break
            await asyncio.sleep(POLL_S)
        async with self:
            self.starting, self.start_error = False, error

    @rx.event(background=True)
    async def ask(self):
        async with self:
            if self.chatting or not self.run_id:
                return
            self.chatting, self.chat_error = True, {}
            args = (self.run_id, self.source, self.chat_gguf, self.prompt)
        answers, verdict, error = [], "", {}
        try:
            async with _chat_slot:
                answers, verdict = await asyncio.to_thread(answer, *args)
        except BackpropError as err:
            error = error_view(err)
        except Exception as exc:  # noqa: BLE001 - the UI task's outer edge
            error = unexpected_error(exc)
        async with self:
            self.chatting, self.answers, self.verdict, self.chat_error = False, answers, verdict, error


# ---- layout -------------------------------------------------------------------------------------

S = ExportState


def labelled(label: str, *children, **props) -> rx.Component:
    return rx.vstack(rx.text(label, size="2", weight="bold"), *children, spacing="1", width="100%", **props)


def picker(items, value, on_change, test_id: str, placeholder: str = "") -> rx.Component:
    return rx.select.root(
        rx.select.trigger(placeholder=placeholder, width="100%", data_testid=test_id),
        rx.select.content(rx.foreach(items, lambda o: rx.select.item(o["label"], value=o["value"]))),
        value=value, on_change=on_change, disabled=S.exporting,
    )


def source_card() -> rx.Component:
    return ui.card(
        rx.grid(
            labelled("Run", picker(S.runs, S.run_id, S.set_run, "export-run-select", "Pick a finished run")),
            labelled("Adapter", picker(S.sources, S.source, S.set_source, "export-source-select")),
            columns=rx.breakpoints(initial="1", md="2"), spacing="4", width="100%",
        ),
        rx.text("Base model ", rx.code(S.model, variant="ghost"), " · ", S.params, size="1", color_scheme="gray"),
        title="What to export",
    )


def option_row(o, group: str) -> rx.Component:
    """A radio item with its one-line explanation and the size the file will have."""
    return rx.el.label(
        rx.hstack(
            rx.radio_group.item(value=o["value"], data_testid=f"{group}-{o['value']}"),
            rx.text(o["label"], size="2", weight="bold", font_family="monospace", min_width="5.5em"),
            rx.text(o["note"], size="2", color_scheme="gray", flex="1"),
            rx.cond(o["recommended"] == "yes", rx.badge("recommended", size="1", variant="soft")),
            rx.text(o["size"], size="2", white_space="nowrap", data_testid=f"{group}-size-{o['value']}"),
            align="center", spacing="3", width="100%",
        ),
        style={"cursor": "pointer", "width": "100%"},
    )


def options_list(items, value, on_change, group: str) -> rx.Component:
    return rx.radio_group.root(
        rx.vstack(rx.foreach(items, lambda o: option_row(o, group)), spacing="2", width="100%"),
        value=value, on_change=on_change, disabled=S.exporting, width="100%",
    )


def format_card() -> rx.Component:
    def format_item(o) -> rx.Component:
        return rx.radio_cards.item(
            rx.vstack(rx.hstack(rx.text(o["label"], weight="bold"), rx.spacer(),
                                rx.text(o["size"], size="1", color_scheme="gray"), width="100%"),
                      rx.text(o["note"], size="1", color_scheme="gray"), spacing="1", align="start",
                      width="100%"),
            value=o["value"], data_testid=f"format-{o['value']}",
        )

    return ui.card(
        rx.radio_cards.root(rx.foreach(S.format_options, format_item), value=S.format,
                            on_value_change=S.set_format, disabled=S.exporting,
                            columns=rx.breakpoints(initial="1", md="3"), width="100%"),
        rx.match(
            S.format,
            ("gguf", labelled("Quantization", options_list(S.quant_options, S.quantization, S.set_quantization,
                                                           "quant"))),
            ("merged", labelled("Weights dtype", options_list(S.dtype_options, S.dtype, S.set_dtype, "dtype"))),
            rx.fragment(),
        ),
        rx.cond(S.format == "gguf", labelled(
            "Register with Ollama (optional)",
            rx.input(value=S.ollama_name, on_change=S.set_ollama_name, placeholder=S.ollama_placeholder,
                     disabled=S.exporting, max_length=120, width="100%", data_testid="ollama-name"),
            rx.text("A model name registers the GGUF with the Ollama server at ", rx.code(S.ollama_host),
                    " once it is verified; leave it empty to only write the file.", size="1",
                    color_scheme="gray"),
        )),
        ui.error_callout(S.start_error, test_id="start-error"),
        rx.button(rx.icon("package"), "Export", on_click=S.start, size="3", loading=S.starting | S.exporting,
                  disabled=(S.run_id == "") | (S.sources.length() == 0), data_testid="export-start"),
        title="Format",
    )


def stage_chip(s) -> rx.Component:
    icon = rx.match(s["status"], ("done", rx.icon("circle-check", size=14, color=rx.color("green", 10))),
                    ("active", rx.spinner(size="1")),
                    ("failed", rx.icon("circle-x", size=14, color=rx.color("red", 10))),
                    rx.icon("circle", size=14, color=rx.color("gray", 8)))
    return rx.hstack(icon, rx.text(s["label"], size="2"), align="center", spacing="1",
                     data_status=s["status"], data_testid="export-stage")


def progress_card() -> rx.Component:
    line = lambda m: rx.hstack(  # noqa: E731
        rx.text(m["time"], size="1", color_scheme="gray", font_family="monospace"),
        rx.badge(m["stage"], variant="outline", size="1"),
        rx.text(m["text"], size="1", style={"word_break": "break-all"}), spacing="2", align="center")
    return ui.card(
        rx.hstack(rx.text(S.title, weight="bold"), rx.text("started ", S.started, size="1", color_scheme="gray"),
                  rx.spacer(), ui.status_badge(rx.match(S.status, ("done", "completed"), S.status),
                                               data_testid="export-state"),
                  align="center", width="100%"),
        rx.flex(rx.foreach(S.stages, stage_chip), wrap="wrap", spacing="4"),
        rx.progress(value=S.progress, max=100, width="100%"),
        rx.cond(S.exporting, rx.vstack(rx.foreach(S.messages, line), spacing="1", data_testid="export-messages")),
        ui.error_callout(S.error, test_id="export-error"),
        title="Export progress",
    )


def check_row(c) -> rx.Component:
    icon = rx.match(c["status"], ("ok", rx.icon("check", size=16, color=rx.color("green", 10))),
                    ("bad", rx.icon("x", size=16, color=rx.color("red", 10))),
                    rx.icon("info", size=16, color=rx.color("gray", 9)))
    return rx.table.row(rx.table.cell(icon, width="2em"),
                        rx.table.cell(rx.text(c["label"], size="2"), white_space="nowrap", width="14em"),
                        rx.table.cell(rx.text(c["value"], size="2")), data_status=c["status"])


def ollama_block() -> rx.Component:
    return rx.vstack(
        rx.text(rx.cond(S.ollama["registered"] == "yes",
                        rx.fragment("Registered with Ollama at ", rx.code(S.ollama["host"]), ". Run it:"),
                        "Not registered with Ollama. To use it there:"), size="2"),
        rx.hstack(
            rx.code(S.ollama["command"], size="2", style={"word_break": "break-all", "padding": "0.5em"},
                    data_testid="ollama-command"),
            rx.tooltip(rx.icon_button(rx.icon("copy", size=16), on_click=rx.set_clipboard(S.ollama["command"]),
                                      variant="soft", data_testid="copy-ollama"), content="Copy"),
            align="center", spacing="2", width="100%",
        ),
        ui.error_callout(S.ollama_error, test_id="ollama-error"),
        spacing="2", width="100%",
    )


def result_card() -> rx.Component:
    return ui.card(
        rx.callout.root(
            rx.callout.icon(rx.icon("circle-check")),
            rx.callout.text(rx.text.strong(S.result["verified"], data_testid="export-verified"), " · ",
                            S.result["size"], " · ", S.result["seconds"]),
            color_scheme=rx.cond(S.result["verified"] == "verified", "green", "orange"), width="100%",
        ),
        labelled("File", ui.code_text(S.result["path"]), data_testid="export-path"),
        rx.cond(S.checks.length() > 0,
                rx.table.root(rx.table.body(rx.foreach(S.checks, check_row)), size="1", width="100%",
                              data_testid="export-checks")),
        rx.cond(S.ollama.contains("command"), ollama_block()),
        title="Result",
        data_testid="export-result",
    )


def files_card() -> rx.Component:
    row = lambda e: rx.table.row(  # noqa: E731
        rx.table.cell(rx.badge(e["key"], variant="soft")),
        rx.table.cell(rx.text(e["size"], size="2", white_space="nowrap")),
        rx.table.cell(rx.cond(e["verified"] != "", rx.badge(
            e["verified"], color_scheme=rx.cond(e["verified"] == "verified", "green", "gray"), variant="outline"))),
        rx.table.cell(ui.code_text(e["path"])),
    )
    return ui.card(
        rx.cond(S.files.length() > 0,
                rx.table.root(rx.table.body(rx.foreach(S.files, row)), size="1", width="100%"),
                ui.empty_note("This run has no adapter or exports on disk.")),
        title="Files of this run", data_testid="export-run",
    )


def chat_card() -> rx.Component:
    answer = lambda a: rx.card(  # noqa: E731
        rx.vstack(rx.hstack(rx.text(a["label"], size="2", weight="bold"), rx.spacer(),
                            rx.text(a["meta"], size="1", color_scheme="gray"), width="100%"),
                  rx.text(a["text"], size="2", white_space="pre-wrap", style={"word_break": "break-word"}),
                  spacing="2", width="100%"),
        width="100%", data_testid=f"answer-{a['engine']}")
    return ui.card(
        rx.text("Ask the fine-tuned model and its GGUF the same question: both answer greedily from the "
                "same prompt tokens, so a good export answers like the model that was trained. Each "
                "question loads the models afresh, which takes a few seconds.", size="2"),
        rx.grid(
            labelled("Compare with", picker(S.chat_ggufs, S.chat_gguf, S.set_chat_gguf, "chat-gguf")),
            columns=rx.breakpoints(initial="1", md="2"), width="100%",
        ),
        rx.text_area(value=S.prompt, on_change=S.set_prompt, placeholder="Ask something from your training data…",
                     max_length=MAX_PROMPT, rows="3", width="100%", data_testid="chat-prompt"),
        rx.button(rx.icon("message-circle"), "Ask", on_click=S.ask, loading=S.chatting,
                  disabled=S.run_id == "", data_testid="chat-ask"),
        ui.error_callout(S.chat_error, test_id="chat-error"),
        rx.cond(S.answers.length() > 0, rx.vstack(
            rx.grid(rx.foreach(S.answers, answer), columns=rx.breakpoints(initial="1", md="2"), spacing="3",
                    width="100%"),
            rx.cond(S.verdict != "", rx.badge(S.verdict, color_scheme=rx.cond(S.verdict == "identical answers",
                                                                               "green", "orange"),
                                              data_testid="chat-verdict")),
            spacing="2", width="100%")),
        title="Chat with the result",
    )


def export_page() -> rx.Component:
    return layout(
        "/export", "Export",
        ui.error_callout(S.load_error, test_id="load-error"),
        rx.cond(
            S.runs.length() > 0,
            rx.vstack(
                source_card(),
                format_card(),
                rx.cond(S.status != "", progress_card()),
                rx.cond(S.status == "done", result_card()),
                chat_card(),
                files_card(),
                spacing="4", width="100%",
            ),
            ui.card(ui.empty_note("No finished runs yet. Train one on the Train page, then export it here.",
                                  test_id="export-empty")),
        ),
    )


PAGE = Page("/export", "Export", export_page, [ShellState.watch, ExportState.load])
